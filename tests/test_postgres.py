"""MLflow and Optuna on a real PostgreSQL server (`initdb` in a temporary folder, `postgres` on 127.0.0.1 and a
free port, password authentication), with studies on a real local Ray: a study with both stores there whose
password appears nowhere it writes or prints, then `export --register`; `--resume` after the driver is
killed; two studies at once in the same databases; the server stopped mid-study; stores that cannot be used.

Tiny on purpose: digits, one hidden layer of 32, 1 to 5 epochs.
"""

from __future__ import annotations

import json
import logging
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray
import yaml
from mlflow import MlflowClient
from ray import tune

from farm_sweep.export.command import main as export_main
from farm_sweep.run import main as run_main
from farm_sweep.sweep import stores, tracking
from farm_sweep.sweep.results_table import read_table
from farm_sweep.sweep.runner import run_study
from farm_sweep.sweep.study import load_study
from tests.processes import PostgresServer, free_port, postgres_binaries, read_until, when_epoch_reported

ROOT = Path(__file__).resolve().parents[1]
FIXED = {"dataset": "digits", "hidden_sizes": [32], "batch_size": 50}
PASSWORD = f"pw-{secrets.token_hex(12)}"  # searched for, byte by byte, in everything a study writes


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin); "
                    "`make test` installs it as root with apt-get (package postgresql)")
    postgres = PostgresServer(binaries, "farm", PASSWORD)
    try:
        postgres.start()
        yield postgres
    finally:
        postgres.close()


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def databases(server: PostgresServer, name: str) -> tuple[str, str]:
    """URLs (with the password) of two new databases: MLflow's and Optuna's (each store needs its own)."""
    server.execute(f"CREATE DATABASE {name}_mlflow", f"CREATE DATABASE {name}_optuna")
    return server.url(f"{name}_mlflow"), server.url(f"{name}_optuna")


def study_file(folder: Path, name: str, lrs: list[float], epochs: int, **settings: Any) -> Path:
    document = {"name": name, "fixed": {**FIXED, "epochs": epochs}, "pruner": "none", "trials": len(lrs),
                "max_concurrent_trials": 1, "resources": {"cpus": 1},
                "search_space": {"parameters": {"lr": {"distribution": "categorical", "choices": lrs}}},
                "enqueue": [{"lr": lr} for lr in lrs], **settings}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def driver(path: Path, output: Path, address: str, tracking_uri: str, optuna_storage: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "farm_sweep.run", str(path), "--output", str(output), "--address", address,
         "--tracking-uri", tracking_uri, "--optuna-storage", optuna_storage],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def runs(uri: str, name: str) -> tuple[Any, dict[str, Any]]:
    """The study's parent run, and its child runs by trial id."""
    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    (parent,) = [run for run in found if tracking.TRIAL_TAG not in run.data.tags]
    return parent, {run.data.tags[tracking.TRIAL_TAG]: run for run in found if tracking.TRIAL_TAG in run.data.tags}


def steps(uri: str, run: Any) -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, "nll_image"))


def optuna_states(storage: str, name: str) -> list[str]:
    return [trial.state.name for trial in optuna.load_study(study_name=name, storage=storage).trials]


def files_holding(folder: Path, text: str) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file() and text.encode() in path.read_bytes()]


def test_a_study_on_postgresql_writes_and_prints_no_password_and_its_exports_register(
        server: PostgresServer, ray_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tracking_uri, optuna_storage = databases(server, "quick")
    output = tmp_path / "out"
    study = driver(study_file(tmp_path, "quick", [2e-2, 1e-2], epochs=2, max_concurrent_trials=2), output,
                   ray_address, tracking_uri, optuna_storage)
    said, _ = study.communicate(timeout=600)
    assert study.returncode == 0, said[-4000:]

    assert PASSWORD not in said and f"mlflow: postgresql://farm:***@127.0.0.1:{server.port}/quick_mlflow" in said
    assert files_holding(output, PASSWORD) == []  # records, Tune's pickled state, journal, tables, checkpoints
    assert not (output / "mlflow.db").exists() and not (output / "optuna.db").exists()
    parent, children = runs(tracking_uri, "quick")
    rows = read_table(output / "trials.csv")
    assert sorted(children) == sorted(row["trial_id"] for row in rows) and parent.info.status == "FINISHED"
    assert parent.data.params["optuna_storage"] == stores.public(optuna_storage)
    for run in [parent, *children.values()]:
        assert PASSWORD not in json.dumps([run.data.params, run.data.tags])
    for row in rows:
        child = children[row["trial_id"]]
        assert child.data.tags[tracking.STATUS_TAG] == "completed" and steps(tracking_uri, child) == [1, 2]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert optuna_states(optuna_storage, "quick") == ["COMPLETE", "COMPLETE"]

    # export --register as a user runs it: the study keeps no password; PostgreSQL's client finds PGPASSWORD
    monkeypatch.setattr(stores, "_known", {})
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    assert export_main(["--output", str(output), "--top", "1", "--out", str(tmp_path / "exported"), "--register"]) == 0
    (version,) = MlflowClient(tracking_uri).search_model_versions(f"name = 'farm-{output.name}'")
    assert version.run_id in {run.info.run_id for run in children.values()}
    assert (output / "mlartifacts").is_dir()  # a database store keeps the artifacts in the output folder


def test_resume_after_the_driver_is_killed(server: PostgresServer, ray_address: str, tmp_path: Path) -> None:
    tracking_uri, optuna_storage = databases(server, "resume")
    path = study_file(tmp_path, "resume", [2e-2, 1e-2, 5e-3], epochs=2)
    output = tmp_path / "out"
    killed = driver(path, output, ray_address, tracking_uri, optuna_storage)
    try:
        seen = read_until(killed, "epoch 1/2", after="completed after epoch 2")
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    finished = [line.split()[0] for line in seen if "completed after epoch 2" in line]

    # the same store options again, as the resume command of a study whose passwords are in its URLs
    rows = run_study(load_study(path), output, resume=True, tracking_uri=tracking_uri, optuna_storage=optuna_storage)
    assert [row["status"] for row in rows] == ["completed"] * 3
    analysis = tune.ExperimentAnalysis(str(output / "ray" / "resume"))
    for trial_id in finished:
        assert list(analysis.trial_dataframes[trial_id]["epoch"]) == [1, 2], f"{trial_id} ran again"
    parent, children = runs(tracking_uri, "resume")
    assert parent.info.status == "FINISHED" and sorted(children) == sorted(row["trial_id"] for row in rows)
    assert all(steps(tracking_uri, run) == [1, 2] for run in children.values())
    assert optuna_states(optuna_storage, "resume") == ["COMPLETE"] * 3


def test_two_studies_at_once_in_one_database(server: PostgresServer, ray_address: str, tmp_path: Path) -> None:
    """Both start on empty databases at the same moment: their tables are created once, under the advisory lock,
    and each study sees only its own runs and trials."""
    tracking_uri, optuna_storage = databases(server, "shared")
    names = {"first": [2e-2, 1e-2], "second": [5e-3, 2e-3]}
    drivers = {name: driver(study_file(tmp_path, name, lrs, epochs=1), tmp_path / name, ray_address, tracking_uri,
                            optuna_storage) for name, lrs in names.items()}
    said = {name: process.communicate(timeout=600)[0] for name, process in drivers.items()}
    assert all(process.returncode == 0 for process in drivers.values()), said

    assert set(optuna.get_all_study_names(optuna_storage)) == set(names)
    for name, lrs in names.items():
        rows = read_table(tmp_path / name / "trials.csv")
        parent, children = runs(tracking_uri, name)
        assert sorted(children) == sorted(row["trial_id"] for row in rows)
        assert {run.info.run_id for run in children.values()} == {row["mlflow_run_id"] for row in rows}
        assert {run.data.tags["mlflow.parentRunId"] for run in children.values()} == {parent.info.run_id}
        trials = optuna.load_study(study_name=name, storage=optuna_storage).trials
        assert sorted(trial.params["lr"] for trial in trials) == sorted(lrs)
        assert {trial.state.name for trial in trials} == {"COMPLETE"}


def test_a_database_server_that_goes_away_mid_study_loses_nothing(server: PostgresServer, ray_address: str,
                                                                   tmp_path: Path) -> None:
    """As with an MLflow server that goes away (test_reliability.py): the writes the database refuses are
    journaled, trials go on, and the replay logs them once the server is back."""
    tracking_uri, _ = databases(server, "outage")
    output = tmp_path / "out"
    try:
        watcher = threading.Thread(target=when_epoch_reported, args=(output, "outage", 2, server.stop))
        watcher.start()
        rows = run_study(load_study(study_file(tmp_path, "outage", [2e-2, 1e-2], epochs=5)), output,
                         tracking_uri=tracking_uri)
        watcher.join()
    finally:
        server.start()  # whether or not the watcher stopped it
    assert [(row["status"], row["epochs"]) for row in rows] == [("completed", 5), ("completed", 5)]
    tracker = tracking.load(output)
    unlogged = tracker.unlogged()
    assert unlogged and {entry["call"] for entry in unlogged} >= {"log_metrics", "finish_study"}
    assert PASSWORD not in (output / tracking.JOURNAL_FILE).read_text()

    assert tracker.replay() == 0
    parent, children = runs(tracking_uri, "outage")
    assert sorted(children) == sorted(row["trial_id"] for row in rows) and parent.info.status == "FINISHED"
    for run in children.values():
        assert steps(tracking_uri, run) == [1, 2, 3, 4, 5] and run.data.tags[tracking.STATUS_TAG] == "completed"


def test_stores_that_cannot_be_used_exit_2_at_once(server: PostgresServer, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Each refused before Ray starts, with the option, the reason and the fix; no password shown, nothing
    written."""
    tracking_uri, optuna_storage = databases(server, "bad")
    server.execute("CREATE ROLE reader LOGIN PASSWORD 'reader-secret'")
    run_study_path = study_file(tmp_path, "bad", [2e-2], epochs=1)
    optuna.create_study(study_name="taken", storage=optuna_storage)
    wrong = server.url("bad_mlflow", password="wrong-secret")
    cases = {
        "wrong password": (["--tracking-uri", wrong], "--tracking-uri: cannot connect to postgresql://farm:***@",
                           'password authentication failed for user "farm"'),
        "nothing listening": (["--optuna-storage", optuna_storage.replace(str(server.port), str(free_port()))],
                              "--optuna-storage: cannot connect to", "start the database server"),
        "no right to create tables": (["--tracking-uri", server.url("bad_mlflow", "reader", "reader-secret")],
                                      "--tracking-uri: MLflow cannot set up its tables",
                                      "permission denied for schema public; let the user create tables there"),
        "one database for both": (["--tracking-uri", tracking_uri, "--optuna-storage", tracking_uri],
                                  "--optuna-storage: postgresql://farm:***@", "holds MLflow's tables; give Optuna a "
                                  "database of its own"),
        "a study of that name": (["--optuna-storage", optuna_storage], "--optuna-storage:",
                                 "already holds an Optuna study named 'taken'; rename the study"),
        "not a database": (["--optuna-storage", "http://127.0.0.1:5000"], "--optuna-storage: not a database URL",
                           "give postgresql://USER@HOST:PORT/DATABASE"),
    }
    for case, (options, *expected) in cases.items():
        path = study_file(tmp_path, "taken", [2e-2], epochs=1) if case == "a study of that name" else run_study_path
        output = tmp_path / case.replace(" ", "_")
        assert run_main([str(path), "--output", str(output), *options]) == 2, case
        said = capsys.readouterr()
        assert all(part in said.err for part in expected), (case, said.err)
        assert "Traceback" not in said.err and not output.exists(), case
        assert not any(secret in said.out + said.err for secret in (PASSWORD, "reader-secret", "wrong-secret")), case
