"""MLflow and Optuna on a real PostgreSQL server (one for the module: `initdb` in a temporary folder, `postgres` on
127.0.0.1 and a free port, password authentication), with studies on a real local Ray.

One scenario serves most checks: two studies started at the same moment on the same empty MLflow and Optuna
databases, the password in their URLs. `quick` (3 trials x 2 epochs, one at a time) has its driver killed once
Tune has saved its first trial as finished, and is resumed (three, so that trials which reuse their worker cannot
all finish between two of Tune's snapshots); `second` (1 trial x 1 epoch, then its confirmation:
2 fresh seeds) runs through meanwhile. Then `export --register` on `quick`, as a user runs it. Apart: the server
stopped mid-study, and stores that cannot be used.

Tiny on purpose: digits, one hidden layer of 32.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from ray import tune

from farm_sweep.export.command import main as export_main
from farm_sweep.run import main as run_main
from farm_sweep.sweep import confirmation, stores, tracking
from farm_sweep.sweep.confirmation_table import CONFIRMATION_FILE
from farm_sweep.sweep.results_table import read_table
from farm_sweep.sweep.runner import run_study
from farm_sweep.sweep.study import load_study
from tests.processes import (
    GATE,
    PostgresServer,
    finished_trials,
    free_port,
    gated,
    postgres_binaries,
    study_file,
    when_epoch_reported,
)

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = f"pw-{secrets.token_hex(12)}"  # searched for, byte by byte, in everything a study writes
STUDIES = {"quick": [2e-2, 1.5e-2, 1e-2, 7e-3, 5e-3], "second": [5e-3]}
QUICK_EPOCHS = 3  # x 5 trials one at a time: still running when Tune has saved the first as finished
EPOCH_STEPS = list(range(1, QUICK_EPOCHS + 1))


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


@dataclass(frozen=True)
class Shared:
    """The two studies of the shared databases, once both have finished."""

    folder: Path
    tracking_uri: str  # with the password
    optuna_storage: str  # with the password
    said: dict[str, str]  # each driver's printed output (quick's until it was killed)
    killed_after: list[str]  # quick's trials that had finished when its driver was killed
    rows: dict[str, list[dict[str, Any]]]  # each study's trials.csv

    def output(self, name: str) -> Path:
        return self.folder / name


@pytest.fixture(scope="module")
def shared(server: PostgresServer, ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Shared:
    folder = tmp_path_factory.mktemp("shared")
    tracking_uri, optuna_storage = databases(server, "shared")
    paths = {"quick": study_file(folder, "quick", STUDIES["quick"], epochs=QUICK_EPOCHS),
             "second": study_file(folder, "second", STUDIES["second"], epochs=1, confirm={"top": 1, "seeds": 2},
                                  max_concurrent_trials=2)}
    drivers = {name: driver(path, folder / name, ray_address, tracking_uri, optuna_storage)
               for name, path in paths.items()}
    try:
        killed_after = finished_trials(folder / "quick" / "ray" / "quick", drivers["quick"])
    finally:
        drivers["quick"].send_signal(signal.SIGKILL)
    said = {"quick": drivers["quick"].communicate()[0]}
    # while `second` runs: the same store options again, as the resume command of a study whose passwords are in
    # its URLs
    run_study(load_study(paths["quick"]), folder / "quick", resume=True, tracking_uri=tracking_uri,
              optuna_storage=optuna_storage)
    said["second"] = drivers["second"].communicate(timeout=600)[0]
    assert drivers["second"].returncode == 0, said["second"][-4000:]
    return Shared(folder, tracking_uri, optuna_storage, said, killed_after,
                  {name: read_table(folder / name / "trials.csv") for name in STUDIES})


def databases(server: PostgresServer, name: str) -> tuple[str, str]:
    """URLs (with the password) of two new databases: MLflow's and Optuna's (each store needs its own)."""
    server.execute(f"CREATE DATABASE {name}_mlflow", f"CREATE DATABASE {name}_optuna")
    return server.url(f"{name}_mlflow"), server.url(f"{name}_optuna")


def driver(path: Path, output: Path, address: str, tracking_uri: str, optuna_storage: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "farm_sweep.run", str(path), "--output", str(output), "--address", address,
         "--tracking-uri", tracking_uri, "--optuna-storage", optuna_storage],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@dataclass(frozen=True)
class StudyRuns:
    parent: Any
    trials: dict[str, Any]  # the search's child runs, by trial id, but for the lost ones
    lost: dict[str, Any]  # runs of trials that a killed driver started after Tune's last snapshot of its state
    stages: dict[str, Any]  # the runs of the study's stages (the confirmation), by name
    seeds: dict[str, Any]  # the runs nested under a stage, by trial id

    def all(self) -> list[Any]:
        return [self.parent, *self.trials.values(), *self.lost.values(), *self.stages.values(),
                *self.seeds.values()]


def study_runs(uri: str, name: str) -> StudyRuns:
    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    (parent,) = [run for run in found if MLFLOW_PARENT_RUN_ID not in run.data.tags]
    stages = {run.data.tags[tracking.STAGE_TAG]: run for run in found if tracking.STAGE_TAG in run.data.tags}

    def trials_under(run: Any) -> dict[str, Any]:
        return {child.data.tags[tracking.TRIAL_TAG]: child for child in found if tracking.TRIAL_TAG in child.data.tags
                and child.data.tags[MLFLOW_PARENT_RUN_ID] == run.info.run_id
                and child.data.tags[tracking.STATUS_TAG] != "lost"}

    lost = {run.data.tags[tracking.TRIAL_TAG]: run for run in found if run.data.tags.get(tracking.STATUS_TAG) == "lost"}
    return StudyRuns(parent, trials_under(parent), lost, stages,
                     {trial: run for stage in stages.values() for trial, run in trials_under(stage).items()})


def steps(uri: str, run: Any) -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, "nll_image"))


def files_holding(folder: Path, text: str) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file() and text.encode() in path.read_bytes()]


def test_a_study_on_postgresql_writes_and_prints_no_password(shared: Shared, server: PostgresServer) -> None:
    output = shared.output("quick")
    for name, said in shared.said.items():
        assert PASSWORD not in said, name
        assert f"mlflow: postgresql://farm:***@127.0.0.1:{server.port}/shared_mlflow" in said, said[-3000:]
        assert f"optuna: postgresql://farm:***@127.0.0.1:{server.port}/shared_optuna" in said, said[-3000:]
    assert "MLflow UI: mlflow ui --backend-store-uri postgresql://farm:***@" in shared.said["second"]
    for name in STUDIES:  # records, Tune's pickled state, tables, checkpoints, the confirmation's plan
        assert files_holding(shared.output(name), PASSWORD) == [], name
        assert not (shared.output(name) / "mlflow.db").exists() and not (shared.output(name) / "optuna.db").exists()
    for name in STUDIES:  # the runs of the search and of the confirmation
        runs = study_runs(shared.tracking_uri, name)
        assert runs.parent.data.params["optuna_storage"] == stores.public(shared.optuna_storage)
        for run in runs.all():
            assert PASSWORD not in json.dumps([run.data.params, run.data.tags])
    assert (output / "mlartifacts").is_dir()  # a database store keeps the artifacts in the output folder


def test_resume_after_the_driver_is_killed_finishes_each_trial_once(shared: Shared) -> None:
    rows = shared.rows["quick"]
    trials = len(STUDIES["quick"])
    assert [row["status"] for row in rows] == ["completed"] * trials
    assert 1 <= len(shared.killed_after) < trials  # killed mid-study
    analysis = tune.ExperimentAnalysis(str(shared.output("quick") / "ray" / "quick"))
    for trial_id in shared.killed_after:
        assert list(analysis.trial_dataframes[trial_id]["epoch"]) == EPOCH_STEPS, f"{trial_id} ran again"
    runs = study_runs(shared.tracking_uri, "quick")
    assert runs.parent.info.status == "FINISHED" and sorted(runs.trials) == sorted(row["trial_id"] for row in rows)
    for run in runs.lost.values():  # a trial started within Tune's last second: its configuration ran again
        assert run.info.status == "KILLED" and "--resume ran its configuration as a new trial" in \
            run.data.tags[tracking.REASON_TAG]
    for row in rows:
        run = runs.trials[row["trial_id"]]
        assert run.data.tags[tracking.STATUS_TAG] == "completed" and steps(shared.tracking_uri, run) == EPOCH_STEPS
    states = Counter(trial.state.name for trial in optuna.load_study(study_name="quick",
                                                                      storage=shared.optuna_storage).trials)
    # A lost trial's Optuna trial fails, and so does one the searcher asked for just before the kill, before Tune
    # started its trial (it has no run).
    assert states["COMPLETE"] == trials and states["FAIL"] >= len(runs.lost) and set(states) <= {"COMPLETE", "FAIL"}


def test_the_confirmation_runs_on_the_study_s_stores(shared: Shared) -> None:
    """A study on PostgreSQL confirms on PostgreSQL: the confirmation's run and its seed's run are in the study's
    MLflow database, under its parent run."""
    seeds = [row for row in read_table(shared.output("second") / CONFIRMATION_FILE) if row["kind"] == "seed"]
    assert len(seeds) == 2 and all(row["status"] == "completed" and float(row["test/nll_image"]) > 0 for row in seeds)
    runs = study_runs(shared.tracking_uri, "second")
    stage = runs.stages[confirmation.STAGE]
    assert stage.info.status == "FINISHED" and stage.data.tags[MLFLOW_PARENT_RUN_ID] == runs.parent.info.run_id
    assert {run.info.run_id for run in runs.seeds.values()} == {row["mlflow_run_id"] for row in seeds}
    for run in runs.seeds.values():
        assert run.data.tags[tracking.STATUS_TAG] == "completed" and steps(shared.tracking_uri, run) == [1]
    assert runs.parent.data.tags["farm.confirmed_config_id"] == seeds[0]["config_id"]


def test_two_studies_at_once_in_one_database_keep_to_their_own(shared: Shared) -> None:
    """Both started on empty databases at the same moment: their tables were created once, under the advisory
    lock, and each study sees only its own runs and trials."""
    assert set(optuna.get_all_study_names(shared.optuna_storage)) == set(STUDIES)
    for name, lrs in STUDIES.items():
        rows = shared.rows[name]
        runs = study_runs(shared.tracking_uri, name)
        assert sorted(runs.trials) == sorted(row["trial_id"] for row in rows)
        assert {run.info.run_id for run in runs.trials.values()} == {row["mlflow_run_id"] for row in rows}
        trials = optuna.load_study(study_name=name, storage=shared.optuna_storage).trials
        complete = [trial for trial in trials if trial.state.name == "COMPLETE"]
        assert sorted(trial.params["lr"] for trial in complete) == sorted(lrs)
        failed = [trial for trial in trials if trial.state.name == "FAIL"]  # lost, or asked for just before the kill
        assert len(failed) >= len(runs.lost) and len(failed) + len(complete) == len(trials)


def test_export_registers_with_the_password_from_pgpassword(shared: Shared, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`export --register` as a user runs it: the study keeps no password; PostgreSQL's client finds PGPASSWORD."""
    output = shared.output("quick")
    monkeypatch.setattr(stores, "_known", {})
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    assert export_main(["--output", str(output), "--top", "1", "--out", str(tmp_path), "--register"]) == 0
    (version,) = MlflowClient(shared.tracking_uri).search_model_versions(f"name = 'farm-{output.name}'")
    assert version.run_id in {run.info.run_id for run in study_runs(shared.tracking_uri, "quick").trials.values()}


def test_a_database_server_that_goes_away_mid_study_loses_nothing(server: PostgresServer, ray_address: str,
                                                                   tmp_path: Path) -> None:
    """As with an MLflow server that goes away (test_reliability.py): the writes the database refuses while it is
    stopped (from the trial's second epoch on) are journaled and the trial goes on; the server started again, the
    study's own replay logs them: every epoch and the final status, and no journal left."""
    tracking_uri, _ = databases(server, "outage")
    output = tmp_path / "out"
    journaled: list[str] = []
    try:
        GATE[:] = [1, tmp_path / "stopped"]  # the trial waits after epoch 1 until the server is down
        watcher = threading.Thread(target=when_epoch_reported, args=(
            output, "outage", 1, lambda: journaled.extend(an_outage(server, output / tracking.JOURNAL_FILE,
                                                                    GATE[1]))))
        watcher.start()
        (row,) = run_study(load_study(study_file(tmp_path, "outage", [2e-2], epochs=5)), output,
                           tracking_uri=tracking_uri, trainable=gated)
        watcher.join()
    finally:
        server.start()  # whether or not the watcher stopped it
    assert (row["status"], row["epochs"]) == ("completed", 5)
    assert {json.loads(line)["call"] for line in journaled} >= {"log_metrics"}
    assert not any(PASSWORD in line for line in journaled)
    assert not (output / tracking.JOURNAL_FILE).exists()  # all replayed
    runs = study_runs(tracking_uri, "outage")
    assert list(runs.trials) == [row["trial_id"]] and runs.parent.info.status == "FINISHED"
    (run,) = runs.trials.values()
    assert steps(tracking_uri, run) == [1, 2, 3, 4, 5] and run.data.tags[tracking.STATUS_TAG] == "completed"


def an_outage(server: PostgresServer, journal: Path, gate: Path, timeout: float = 120) -> list[str]:
    """Stop the server (then open the trial's gate) until a refused write reaches the journal; then start it
    again. Returns the journal's lines as they were."""
    server.stop()
    gate.touch()
    deadline = time.monotonic() + timeout
    while not (journal.is_file() and journal.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = journal.read_text().splitlines() if journal.is_file() else []
    server.start()
    return lines


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
