"""Faults inside trials and around them, on a real local Ray, real Optuna and real MLflow: a diverging trial, a
corrupt latest checkpoint, a tracking server that is missing or goes away, a full disk; and around the driver:
Ctrl-C, SIGTERM, SIGKILL and --resume, a second run on the same folder, resource requests no node can grant."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient
from ray import cloudpickle, tune

import farm_sweep.sweep.trial as trial_module
from farm_sweep.sweep import output_lock, tables, tracking
from farm_sweep.sweep.results_table import read_table, write_table
from farm_sweep.sweep.runner import run_study
from farm_sweep.sweep.study import load_study
from farm_sweep.sweep.trial import TrialContext
from tests.processes import (
    GATE,
    descendants,
    finished_trials,
    free_port,
    gated,
    kill,
    read_until,
    run_trial_with,
    start_mlflow_server,
    stop,
    stop_tree,
    study_file,
    when_epoch_reported,
)
from tests.test_tables import check_study_tables

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module

ROOT = Path(__file__).resolve().parents[1]


def child_runs(uri: str, name: str) -> dict[str, Any]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    return {run.data.tags[tracking.TRIAL_TAG]: run for run in runs if tracking.TRIAL_TAG in run.data.tags}


def reported_epochs(output: Path, name: str) -> dict[str, list[int]]:
    frames = tune.ExperimentAnalysis(str(output / "ray" / name)).trial_dataframes
    return {trial_id: list(frame["epoch"]) if "epoch" in frame else [] for trial_id, frame in frames.items()}


EXPERIMENT_STORAGE: list[Path] = []  # set by the fixture before the study starts; pickled into the trainable


def corrupt_latest_after_epoch_3(config: dict[str, Any], context: TrialContext) -> None:
    """run_trial, except that a trial's first attempt to reach epoch 3 truncates its newest Tune checkpoint, then
    dies."""
    storage = EXPERIMENT_STORAGE[0] / tune.get_context().get_trial_name()  # where Tune keeps the checkpoints
    marker = storage / "corrupted_once"

    def corrupt(metrics: dict[str, Any]) -> None:
        if metrics["epoch"] == 3 and not marker.exists():
            marker.touch()
            newest = max(storage.glob("checkpoint_*")) / "model.safetensors"
            newest.write_bytes(newest.read_bytes()[:100])
            raise RuntimeError("injected failure after corrupting the epoch-3 checkpoint")

    run_trial_with(corrupt, config, context)


@pytest.fixture(scope="module")
def faults(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """One study, two faults inside trials: lr 1e30 makes Adam's first steps overflow (the loss is NaN after
    epoch 1, every time); the other trial's first attempt corrupts its epoch-3 checkpoint and dies. One retry
    each (the retries reuse their trial's run)."""
    folder = tmp_path_factory.mktemp("faults")
    path = study_file(folder, "faults", [1e30, 2e-2], epochs=4, max_failures=1)
    output = folder / "out"
    EXPERIMENT_STORAGE[:] = [output / "ray" / "faults"]
    return output, run_study(load_study(path), output, trainable=corrupt_latest_after_epoch_3)


def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(
        faults: tuple[Path, list[dict[str, Any]]]) -> None:
    output, (diverged, healthy) = faults
    assert diverged["status"] == "failed" and "train_loss is nan" in diverged["failure_reason"]
    assert healthy["status"] == "completed"
    runs = child_runs(tracking.default_uri(output), "faults")
    failed = runs[diverged["trial_id"]]
    assert failed.data.tags[tracking.STATUS_TAG] == "failed" and failed.info.status == "FAILED"
    assert "NonFiniteLossError" in failed.data.tags[tracking.REASON_TAG]
    assert runs[healthy["trial_id"]].data.tags[tracking.STATUS_TAG] == "completed"
    assert len(runs) == 2  # the retries of the diverged trial reuse its run


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(
        faults: tuple[Path, list[dict[str, Any]]]) -> None:
    output, (_, row) = faults
    assert (row["status"], row["epochs"]) == ("completed", 4)
    epochs = reported_epochs(output, "faults")[row["trial_id"]]
    assert epochs == [1, 2, 3, 3, 4]  # epoch 3's checkpoint was bad: resumed from epoch 2, one epoch repeated
    restored = output / "ray" / "faults" / f"trial_{row['trial_id']}" / trial_module.RESTORED / "state.json"
    assert json.loads(restored.read_text())["epoch"] == 2  # the trial folder is synced to storage


def test_an_unreachable_tracking_server_fails_at_once_and_writes_nothing(tmp_path: Path) -> None:
    path = study_file(tmp_path, "unreachable", [2e-2], epochs=1)
    output = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "farm_sweep.run", str(path), "--output", str(output),
         "--tracking-uri", f"http://127.0.0.1:{free_port()}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--tracking-uri" in done.stderr and "no MLflow tracking server answers" in done.stderr
    assert "Traceback" not in done.stderr
    assert not output.exists()


def test_a_server_that_goes_away_mid_study_loses_nothing(ray_address: str, tmp_path: Path) -> None:
    port, store = free_port(), tmp_path / "server"
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(store, port)
    output = tmp_path / "out"
    try:
        GATE[:] = [2, tmp_path / "stopped"]  # the trials wait after epoch 2 until the server is down
        watcher = threading.Thread(target=when_epoch_reported, args=(
            output, "outage", 2, lambda: (stop(server), GATE[1].touch())))
        watcher.start()
        rows = run_study(load_study(study_file(tmp_path, "outage", [2e-2, 1e-2], epochs=5)), output,
                         tracking_uri=uri, trainable=gated)
        watcher.join()
    finally:
        stop(server)
    assert [(row["status"], row["epochs"]) for row in rows] == [("completed", 5), ("completed", 5)]
    tracker = tracking.load(output)
    unlogged = tracker.unlogged()
    assert unlogged and {entry["call"] for entry in unlogged} >= {"log_metrics", "finish_study"}

    server = start_mlflow_server(store, port)  # the server comes back: what was kept is logged now
    try:
        assert tracker.replay() == 0
        runs = child_runs(uri, "outage")
        assert sorted(runs) == sorted(row["trial_id"] for row in rows)
        client = MlflowClient(uri)
        for run in runs.values():
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "nll_image")]
            assert sorted(steps) == [1, 2, 3, 4, 5]
            assert run.data.tags[tracking.STATUS_TAG] == "completed"
    finally:
        stop(server)


# ------------------------------------------------------------------ the driver: signals, a second run, resume
# Real drivers (`python -m farm_sweep.run`, with its embedded Ray where the test is about that Ray or the
# driver's whole process group, else joined to the test's Ray), real signals, real second runs.


def start_driver(path: Path, output: Path, *options: str) -> subprocess.Popen:
    """The run command in a process group of its own (a terminal's Ctrl-C signals the whole group)."""
    return subprocess.Popen([sys.executable, "-m", "farm_sweep.run", str(path), "--output", str(output), *options],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(driver: subprocess.Popen, timeout: float = 300) -> str:
    """The driver's remaining output, once it has exited."""
    output, _ = driver.communicate(timeout=timeout)
    return output


def table_rows(output: Path) -> list[dict[str, str]]:
    return read_table(output / "trials.csv")


def optuna_states(output: Path, name: str) -> dict[int, str]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{output / 'optuna.db'}")
    return {trial.number: trial.state.name for trial in study.trials}


def parent_run(output: Path, name: str) -> Any:
    client = MlflowClient(tracking.default_uri(output))
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    (parent,) = [run for run in runs if tracking.TRIAL_TAG not in run.data.tags]
    return parent


def listening_addresses(pids: list[int]) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses the processes' listening TCP sockets are bound to (from /proc)."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for descriptor in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(descriptor)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                raw = bytes.fromhex(fields[1].split(":")[0])
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word reversed
                addresses.add(ipaddress.ip_address(words))
    return addresses


def is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def test_ctrl_c_stops_the_study_and_resume_finishes_each_trial_once(ray_address: str, tmp_path: Path) -> None:
    """One trial runs and the next waits for the CPUs (each asks for all of them) when Ctrl-C reaches the
    driver's process group. Before that, a second run and a --resume on the same folder are refused at once,
    and the embedded Ray listens on the loopback address only."""
    epochs = 12
    path = study_file(tmp_path, "ctrl_c", [2e-2, 1e-2, 5e-3], epochs=epochs, max_concurrent_trials=2,
                      resources={"cpus": os.cpu_count()})
    output = tmp_path / "out"
    driver = start_driver(path, output)
    try:
        read_until(driver, f"epoch 2/{epochs}")
        others = [start_driver(path, output), start_driver(path, output, "--resume")]
        for other in others:
            message = finish(other, timeout=120)
            assert other.returncode == 2 and "Traceback" not in message, message
            assert f"{output}: --output: in use by the run of host" in message and f"pid {driver.pid} " in message
        addresses = listening_addresses([driver.pid, *descendants(driver.pid)])
        assert addresses and all(is_loopback(address) for address in addresses), addresses
        os.killpg(driver.pid, signal.SIGINT)
        said = finish(driver)
    finally:
        stop_tree(driver)
    assert driver.returncode == 130, said
    assert f"python -m farm_sweep.run {path} --output {output.resolve()} --resume" in said

    rows = table_rows(output)
    finished = {int(row["optuna_trial"]) for row in rows if row["status"] == "completed"}
    interrupted = [row for row in rows if row["status"] == "interrupted"]
    assert len(interrupted) == 2 and len(finished) == len(rows) - 2, rows
    assert all(row["epochs"] == str(epochs) for row in rows if row["status"] == "completed")
    assert any(row["epochs"] == "0" and row["mlflow_run_id"] == "" for row in interrupted)  # it was waiting
    client = MlflowClient(tracking.default_uri(output))
    for row in interrupted:
        if row["mlflow_run_id"]:
            child = client.get_run(row["mlflow_run_id"])
            assert child.info.status == "KILLED" and child.data.tags[tracking.STATUS_TAG] == "interrupted"
    parent = parent_run(output, "ctrl_c")
    assert parent.info.status == "KILLED" and parent.data.tags[tracking.STATUS_TAG] == "interrupted"
    # The unfinished ones stay RUNNING (--resume finishes them); an enqueued point that Tune had not yet asked
    # for when the signal came (a slow first trial) is still WAITING.
    states = optuna_states(output, "ctrl_c")
    assert {number: state for number, state in states.items() if state != "WAITING"} == {
        int(row["optuna_trial"]): "COMPLETE" if row["status"] == "completed" else "RUNNING" for row in rows}
    stopped = check_study_tables(output, "ctrl_c")
    assert [(t["trial_id"], t["status"]) for t in stopped["trials"]] == [(r["trial_id"], r["status"]) for r in rows]

    with output_lock.hold(output):  # the resume, in this process on the test's Ray
        run_study(load_study(path), output, resume=True)
    rows = table_rows(output)
    assert [(row["status"], row["epochs"]) for row in rows] == [("completed", str(epochs))] * 3
    reported = reported_epochs(output, "ctrl_c")
    assert sorted(reported) == sorted(row["trial_id"] for row in rows)  # no Ray trial twice
    assert all(trial_epochs[-1] == epochs for trial_epochs in reported.values())
    assert optuna_states(output, "ctrl_c") == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE"}
    resumed_tables = check_study_tables(output, "ctrl_c")  # no epoch twice, though some trials ran in two runs
    assert len(resumed_tables["epochs"]) == 3 * epochs and len(resumed_tables["trials"]) == 3
    assert {(row["trial_id"], row["epoch"]) for row in stopped["epochs"]} < {
        (row["trial_id"], row["epoch"]) for row in resumed_tables["epochs"]}
    runs = child_runs(tracking.default_uri(output), "ctrl_c")
    assert sorted(runs) == sorted(row["trial_id"] for row in rows)  # one MLflow run per trial
    for run in runs.values():
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "nll_image"))
        assert steps == list(range(1, epochs + 1)) and client.get_run(run.info.run_id).info.status == "FINISHED"
    assert parent_run(output, "ctrl_c").info.status == "FINISHED"
    assert not (output / output_lock.LOCK_FILE).exists()


def test_sigterm_stops_the_study_with_exit_status_143(ray_address: str, tmp_path: Path) -> None:
    path = study_file(tmp_path, "sigterm", [2e-2, 1e-2], epochs=6)
    output = tmp_path / "out"
    driver = start_driver(path, output, "--address", ray_address)
    try:
        read_until(driver, "epoch 2/6")
        driver.send_signal(signal.SIGTERM)  # the driver alone, as `kill PID` or a service manager does
        said = finish(driver)
    finally:
        stop_tree(driver)
    assert driver.returncode == 143 and "stopped by SIGTERM" in said and "--resume" in said, said
    assert "completed" not in {row["status"] for row in table_rows(output)}
    assert parent_run(output, "sigterm").info.status == "KILLED"


def test_resume_after_sigkill_takes_over_the_lock_and_runs_no_finished_trial_again(
        ray_address: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """SIGKILL of the driver's process group once Tune's saved state holds a finished trial. Then, as a crash
    can leave it: the lock file still names the dead driver; Tune deleted a checkpoint after its last snapshot
    (done here by deleting every checkpoint older than the one its state names); the searcher had asked Optuna
    for a trial Tune never recorded (done here with study.ask()). The resume (here in this process, on the
    test's Ray) takes the lock over, logs no FileNotFoundError, runs no finished trial again, fails the orphaned
    Optuna trial, and leaves one MLflow run and one table row per trial and epoch."""
    epochs = 4
    path = study_file(tmp_path, "sigkill", [2e-2, 1e-2, 5e-3], epochs=epochs)
    output = tmp_path / "out"
    driver = start_driver(path, output)
    try:  # a trial that finished since the last snapshot is run again (docs/reliability.md)
        finished = finished_trials(output / "ray" / "sigkill", driver)
    finally:
        family = descendants(driver.pid)
        kill(driver)
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert len(finished) < 3  # killed mid-study
    assert f"pid {driver.pid} " in (output / output_lock.LOCK_FILE).read_text()
    written = tables.read(output / tables.FOLDER / "epochs.parquet").to_pylist()  # as the study ran
    for trial in tune.ExperimentAnalysis(str(output / "ray" / "sigkill")).trials:
        if trial.checkpoint is not None:
            for older in Path(trial.checkpoint.path).parent.glob("checkpoint_*"):
                if older.name < Path(trial.checkpoint.path).name:
                    shutil.rmtree(older)
    orphan = optuna.load_study(study_name="sigkill", storage=f"sqlite:///{output / 'optuna.db'}").ask().number

    with output_lock.hold(output):
        rows = run_study(load_study(path), output, resume=True)
    said = capfd.readouterr()
    assert "FileNotFoundError" not in said.out + said.err, said.err[-4000:]
    assert not (output / output_lock.LOCK_FILE).exists()
    assert [(row["status"], row["epochs"]) for row in rows] == [("completed", epochs)] * 3
    assert sorted(float(row["param.lr"]) for row in rows) == [5e-3, 1e-2, 2e-2]  # each enqueued point, once
    analysis = tune.ExperimentAnalysis(str(output / "ray" / "sigkill"))
    for trial_id in finished:
        assert list(analysis.trial_dataframes[trial_id]["epoch"]) == [1, 2, 3, 4], f"{trial_id} ran again"
    runs = child_runs(tracking.default_uri(output), "sigkill")
    # A trial started within Tune's last second is not in its state: its run ends lost, its Optuna trial fails,
    # and its configuration runs again as a new trial.
    lost = {trial_id for trial_id, run in runs.items() if run.data.tags[tracking.STATUS_TAG] == "lost"}
    assert all(runs[trial_id].info.status == "KILLED" for trial_id in lost)
    assert sorted(set(runs) - lost) == sorted(row["trial_id"] for row in rows)
    client = MlflowClient(tracking.default_uri(output))
    for row in rows:
        assert [m.step for m in client.get_metric_history(row["mlflow_run_id"], "nll_image")] == [1, 2, 3, 4]
    states = optuna_states(output, "sigkill")
    assert states.pop(orphan) == "FAIL"
    # Lost trials fail in Optuna, as does one the searcher asked for just before the kill (no run, no Tune trial).
    counts = Counter(states.values())
    assert counts["COMPLETE"] == 3 and counts["FAIL"] >= len(lost) and set(counts) <= {"COMPLETE", "FAIL"}, states
    epochs_table = check_study_tables(output, "sigkill")["epochs"]
    before = {(row["trial_id"], row["epoch"]) for row in written if row["trial_id"] not in lost}
    assert len(epochs_table) == 3 * epochs and before < {(row["trial_id"], row["epoch"]) for row in epochs_table}
    assert parent_run(output, "sigkill").info.status == "FINISHED"


def test_a_resource_request_no_node_can_grant_exits_2_at_start(tmp_path: Path) -> None:
    """Ray would keep such trials waiting forever, warning every minute. (On the embedded Ray: with --address, an
    autoscaler may still add such a node, so the run only warns.)"""
    requests = {"cpus": {"cpus": 1e9}, "custom": {"custom": {"gpu_node": 1}}}
    drivers = {}
    for name, resources in requests.items():
        drivers[name] = start_driver(study_file(tmp_path, name, [2e-2], epochs=1, resources=resources),
                                     tmp_path / name)
    said = {name: finish(driver, timeout=300) for name, driver in drivers.items()}
    for name, driver in drivers.items():
        assert driver.returncode == 2 and "Traceback" not in said[name], said[name]
        assert not (tmp_path / name).exists()  # the output folder the run had locked is gone again
    assert "cpus.yaml: resources.cpus: 1e+09 per trial, but the largest node of the Ray cluster has" in said["cpus"]
    assert "custom.yaml: resources.custom.gpu_node: no node of the Ray cluster has the resource 'gpu_node'" in \
        said["custom"]


def test_a_journal_on_a_full_disk_does_not_stop_the_study(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The tracking server is gone and the disk is full (/dev/full fails every write with ENOSPC): the call is
    lost with an error in the log, and the caller goes on; a table rewritten onto a full disk keeps the old."""
    monkeypatch.setattr(tracking, "BACKOFF_S", 0.0)
    tracker = tracking.Tracker(f"http://127.0.0.1:{free_port()}", "1", "parent", journal="/dev/full")
    tracker.log_metrics("run", {"nll_image": 1.0}, step=1)
    assert "log_metrics is lost: the journal /dev/full cannot be written either (No space left on device)" in \
        caplog.text
    table = tmp_path / "trials.csv"
    write_table([{"trial_id": "a", "status": "completed"}], table)
    (tmp_path / ".trials.csv.tmp").symlink_to("/dev/full")
    with pytest.raises(OSError, match="No space left"):
        write_table([{"trial_id": "a", "status": "failed"}], table)
    assert read_table(table) == [{"trial_id": "a", "status": "completed"}]


def test_while_the_store_is_down_each_write_is_tried_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that failed every attempt marks the store down: the next writes are tried once each and journaled,
    so a trial does not wait out the backoff on every write of an outage."""
    attempts: list[str] = []

    def unreachable(uri: str) -> None:
        attempts.append(uri)
        raise ConnectionError("connection refused")

    monkeypatch.setattr(tracking, "client", unreachable)
    monkeypatch.setattr(tracking, "BACKOFF_S", 0.0)
    monkeypatch.setattr(tracking, "_down_since", {})
    tracker = tracking.Tracker("http://127.0.0.1:1", "1", "parent", journal=str(tmp_path / "journal.jsonl"))
    for step in (1, 2, 3):
        tracker.log_metrics("run", {"nll_image": 1.0}, step=step)
    assert len(attempts) == tracking.ATTEMPTS + 2
    assert [entry["kwargs"]["step"] for entry in tracker.unlogged()] == [1, 2, 3]
