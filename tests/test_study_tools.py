"""A real study in the tools a user opens on it: the MLflow UI in a real headless browser (the experiment marked as
model training, the parent run described, child runs named by their parameters, a trial's figure), and Optuna's
own tools (optuna-dashboard over HTTP, optuna.load_study)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow.entities import Run

from farm_sweep.sweep import tracking
from farm_sweep.sweep.results_table import read_table
from farm_sweep.sweep.runner import OPTUNA_FILE
from tests.processes import MLFLOW_SERVER_ENV, free_port, start_server, stop

BROWSER, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# Where the UI test leaves its screenshot (docs/images/mlflow_study.png is one).
SCREENSHOT_DIR = os.environ.get("FARM_SCREENSHOT_DIR")


def runs(study: Path) -> tuple[Run, list[Run]]:
    tracker = tracking.load(study)
    found = tracker.client.search_runs([tracker.experiment_id])
    (parent,) = [run for run in found if tracking.TRIAL_TAG not in run.data.tags]
    return parent, sorted((run for run in found if tracking.TRIAL_TAG in run.data.tags), key=lambda r: r.info.run_name)


def test_the_experiment_is_model_training_and_its_runs_say_what_they_are(tiny_study: Path) -> None:
    tracker = tracking.load(tiny_study)
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    parent, children = runs(tiny_study)
    note = parent.data.tags["mlflow.note.content"]
    assert "**Study tiny**: 2 trials of up to 1 epochs" in note and "- lr: categorical [0.01, 0.03]" in note
    best = parent.data.tags["farm.best_run_id"]
    assert f"({tracker.ui_path(best)})" in note
    for name in ("param_importance.png", "trials.csv"):
        assert f"[{name}]({tracker.ui_path(parent.info.run_id, f'study/{name}')})" in note
    rows = {row["mlflow_run_id"]: row for row in read_table(tiny_study / "trials.csv")}
    assert [run.info.run_name for run in children] == sorted(
        f"lr={float(rows[run.info.run_id]['param.lr']):.3g} ({run.data.tags[tracking.TRIAL_TAG]})" for run in children)


@pytest.fixture(scope="module")
def mlflow_ui(tiny_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on the study's store, as `mlflow ui --backend-store-uri sqlite:///.../mlflow.db` opens it."""
    port = free_port()
    server = start_server([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                           "--workers", "1", "--backend-store-uri", tracking.default_uri(tiny_study)],
                          f"http://127.0.0.1:{port}/health", tmp_path_factory.mktemp("ui") / "server.log",
                          MLFLOW_SERVER_ENV)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        stop(server)


@pytest.fixture
def browser() -> Iterator[object]:
    if BROWSER is None or DRIVER is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (make test does, as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[test])")
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,760"):
        options.add_argument(argument)
    options.binary_location = BROWSER
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_the_ui_lists_the_study_with_its_trials_and_opens_a_figure(tiny_study: Path, mlflow_ui: str, browser,
                                                                   tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    tracker = tracking.load(tiny_study)
    parent, children = runs(tiny_study)
    wait = WebDriverWait(browser, 120)
    text = lambda: browser.find_element(By.TAG_NAME, "body").text  # noqa: E731

    browser.get(mlflow_ui + tracker.ui_path())  # the address the study's summary prints
    expand = wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, 'button[data-component-id*="runnamecell"]'))
    assert "/runs?" in browser.current_url
    (parent_link,) = browser.find_elements(By.CSS_SELECTOR, f'a[href$="/runs/{parent.info.run_id}"]')
    assert parent_link.text == parent.info.run_name
    for close in browser.find_elements(By.CSS_SELECTOR, 'button[aria-label="Close"]'):  # the assistant's panel
        close.click()
    expand[0].click()  # the parent's children
    wait.until(lambda _: all(child.info.run_name in text() for child in children))
    assert f"{1 + len(children)} matching runs" in text()
    browser.save_screenshot(str(Path(SCREENSHOT_DIR or tmp_path) / "mlflow_study.png"))

    browser.get(mlflow_ui + tracker.ui_path(children[0].info.run_id, "evaluation/inpainting.png"))
    figure = wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, 'img[alt="evaluation/inpainting.png"]'))
    wait.until(lambda _: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", figure[0]))
    assert children[0].info.run_name in text()
    browser.save_screenshot(str(Path(SCREENSHOT_DIR or tmp_path) / "mlflow_trial_figure.png"))


def best_row(study: Path) -> dict[str, str]:
    """trials.csv's best trial: the completed one with the lowest validation nll_image."""
    return min((row for row in read_table(study / "trials.csv") if row["status"] == "completed"),
               key=lambda row: float(row["nll_image"]))


def test_optuna_dashboard_serves_the_study(tiny_study: Path, tmp_path: Path) -> None:
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    port = free_port()
    server = start_server([str(dashboard), f"sqlite:///{tiny_study / OPTUNA_FILE}", "--host", "127.0.0.1",
                           "--port", str(port)], f"http://127.0.0.1:{port}/api/studies", tmp_path / "dashboard.log")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30) as response:
            studies = json.loads(response.read())["study_summaries"]
        (study,) = [s for s in studies if s["study_name"] == "tiny"]
        page = f"http://127.0.0.1:{port}/dashboard/studies/{study['study_id']}"
        with urllib.request.urlopen(page, timeout=30) as response:
            assert response.status == 200 and "<html" in response.read().decode().lower()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=30) as answer:
            detail = json.loads(answer.read())
    finally:
        stop(server, timeout=5)  # gunicorn would wait 30 s for its idle connections to close
    assert detail["name"] == "tiny" and [trial["state"] for trial in detail["trials"]] == ["Complete", "Complete"]
    (best,) = detail["best_trials"]
    assert best["number"] == int(best_row(tiny_study)["optuna_trial"])


def test_optuna_load_study_gives_the_best_trial_of_trials_csv(tiny_study: Path) -> None:
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tiny_study / OPTUNA_FILE}")
    best = best_row(tiny_study)
    assert study.best_trial.number == int(best["optuna_trial"])
    assert study.best_value == pytest.approx(float(best["nll_image"]))
    assert study.best_params == {"lr": float(best["param.lr"])}
