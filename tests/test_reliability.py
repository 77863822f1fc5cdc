"""Faults inside trials and around them, on a real local Ray, real Optuna and real MLflow:
a diverging trial, a corrupt latest checkpoint, a tracking server that is missing or goes away."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import ray
import yaml
from mlflow import MlflowClient
from ray import cloudpickle, tune

import farm_sweep.sweep.trial as trial_module
from farm_sweep.sweep import tracking
from farm_sweep.sweep.runner import run_study
from farm_sweep.sweep.study import load_study
from farm_sweep.sweep.trial import TrialContext, run_trial
from tests.processes import free_port, start_mlflow_server, stop

ROOT = Path(__file__).resolve().parents[1]
FIXED = {"dataset": "digits", "hidden_sizes": [32], "batch_size": 50}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()


def study_file(folder: Path, name: str, lrs: list[float], epochs: int, **settings: Any) -> Path:
    document = {"name": name, "fixed": {**FIXED, "epochs": epochs}, "pruner": "none", "trials": len(lrs),
                "max_concurrent_trials": 1, "resources": {"cpus": 1},
                "search_space": {"parameters": {"lr": {"distribution": "categorical", "choices": lrs}}},
                "enqueue": [{"lr": lr} for lr in lrs], **settings}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def child_runs(uri: str, name: str) -> dict[str, Any]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    return {run.data.tags[tracking.TRIAL_TAG]: run for run in runs if tracking.TRIAL_TAG in run.data.tags}


def reported_epochs(output: Path, name: str) -> dict[str, list[int]]:
    frames = tune.ExperimentAnalysis(str(output / "ray" / name)).trial_dataframes
    return {trial_id: list(frame["epoch"]) for trial_id, frame in frames.items()}


def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(local_ray: None, tmp_path: Path) -> None:
    # lr 1e30 makes Adam's first steps overflow: the loss is NaN after epoch 1, every time.
    path = study_file(tmp_path, "diverge", [1e30, 2e-2], epochs=3, max_failures=2)
    output = tmp_path / "out"
    rows = run_study(load_study(path), output)

    diverged, healthy = rows
    assert diverged["status"] == "failed" and "train_loss is nan" in diverged["failure_reason"]
    assert (healthy["status"], healthy["epochs"]) == ("completed", 3)
    runs = child_runs(tracking.default_uri(output), "diverge")
    failed = runs[diverged["trial_id"]]
    assert failed.data.tags[tracking.STATUS_TAG] == "failed" and failed.info.status == "FAILED"
    assert "NonFiniteLossError" in failed.data.tags["farm.failure_reason"]
    assert runs[healthy["trial_id"]].data.tags[tracking.STATUS_TAG] == "completed"
    assert len(runs) == 2  # the retries of the diverged trial reuse its run


EXPERIMENT_STORAGE: list[Path] = []  # set by the test before the study starts; pickled into the trainable


def corrupt_latest_after_epoch_3(config: dict[str, Any], context: TrialContext) -> None:
    """run_trial, except that the first attempt truncates its newest Tune checkpoint after epoch 3, then dies."""
    storage = EXPERIMENT_STORAGE[0] / tune.get_context().get_trial_name()  # where Tune keeps the checkpoints
    marker = storage / "corrupted_once"
    real_train = trial_module.train

    def train(*args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for metrics in real_train(*args, **kwargs):
            yield metrics  # run_trial reports it, with its checkpoint, before asking for the next epoch
            if metrics["epoch"] == 3 and not marker.exists():
                marker.touch()
                newest = max(storage.glob("checkpoint_*")) / "model.safetensors"
                newest.write_bytes(newest.read_bytes()[:100])
                raise RuntimeError("injected failure after corrupting the epoch-3 checkpoint")

    with mock.patch.object(trial_module, "train", train):
        run_trial(config, context)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(local_ray: None, tmp_path: Path) -> None:
    path = study_file(tmp_path, "corrupt", [2e-2], epochs=4, max_failures=1)
    output = tmp_path / "out"
    EXPERIMENT_STORAGE[:] = [output / "ray" / "corrupt"]
    (row,) = run_study(load_study(path), output, trainable=corrupt_latest_after_epoch_3)

    assert (row["status"], row["epochs"]) == ("completed", 4)
    (epochs,) = reported_epochs(output, "corrupt").values()
    assert epochs == [1, 2, 3, 3, 4]  # epoch 3's checkpoint was bad: resumed from epoch 2, one epoch repeated
    restored = output / "ray" / "corrupt" / f"trial_{row['trial_id']}" / trial_module.RESTORED / "state.json"
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


def test_a_server_that_goes_away_mid_study_loses_nothing(local_ray: None, tmp_path: Path) -> None:
    port, store = free_port(), tmp_path / "server"
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(store, port)
    output = tmp_path / "out"
    try:
        watcher = threading.Thread(target=_stop_when_epoch_reported, args=(output, "outage", 2, server))
        watcher.start()
        rows = run_study(load_study(study_file(tmp_path, "outage", [2e-2, 1e-2], epochs=5)), output,
                         tracking_uri=uri)
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


def _stop_when_epoch_reported(output: Path, name: str, epoch: int, server: subprocess.Popen) -> None:
    """Stop the tracking server once any trial of the study has reported `epoch`."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for result in (output / "ray" / name).glob("trial_*/result.json"):
            lines = result.read_text().splitlines()
            if any(json.loads(line).get("epoch", 0) >= epoch for line in lines if line.strip()):
                stop(server)
                return
        time.sleep(0.2)
