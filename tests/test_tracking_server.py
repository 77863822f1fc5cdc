"""A study tracked by a real `mlflow server` (127.0.0.1, a free port), read back through MLflow's client."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import yaml
from mlflow import MlflowClient

from farm_sweep import tracking
from farm_sweep.run import run_study
from farm_sweep.study import load_study


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}", "--artifacts-destination",
         str(folder / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "w"))  # noqa: SIM115 (closed with the process)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(uri, process, folder / "server.log")
        yield uri
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(uri: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"mlflow server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server did not become healthy in {timeout}s:\n{log.read_text()[-3000:]}")


def test_study_runs_metrics_and_artifacts_reach_the_server(server: str, tmp_path: Path) -> None:
    document = {"name": "served", "trials": 2, "pruner": "none", "max_concurrent_trials": 2,
                "resources": {"cpus": 1},
                "fixed": {"dataset": "digits", "hidden_sizes": [32], "epochs": 2, "num_orderings": 2},
                "search_space": {"parameters": {"lr": {"distribution": "categorical", "choices": [0.01, 0.02]}}},
                "enqueue": [{"lr": 0.01}, {"lr": 0.02}]}
    (tmp_path / "served.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    output = tmp_path / "out"
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        rows = run_study(load_study(tmp_path / "served.yaml"), output, tracking_uri=server)
    finally:
        ray.shutdown()
    assert not (output / "mlflow.db").exists()

    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("served")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if tracking.TRIAL_TAG not in run.data.tags]
    children = [run for run in runs if tracking.TRIAL_TAG in run.data.tags]
    assert sorted(run.data.tags[tracking.TRIAL_TAG] for run in children) == sorted(row["trial_id"] for row in rows)
    assert parent.info.status == "FINISHED" and parent.data.params["trials"] == "2"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"study", "study_files", "best_trial.json"}
    assert "study/trials.csv" in {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags[tracking.STATUS_TAG] == "completed" and child.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "nll_image")] == [1, 2]
        assert float(child.data.params["lr"]) in (0.01, 0.02) and child.data.params["dataset"] == "digits"
        files = {a.path for a in client.list_artifacts(child.info.run_id, "checkpoint")}
        assert "checkpoint/model.safetensors" in files
    downloaded = client.download_artifacts(children[0].info.run_id, "checkpoint/state.json", str(tmp_path))
    assert Path(downloaded).read_text().startswith("{")
