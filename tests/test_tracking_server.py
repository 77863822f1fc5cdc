"""A study tracked by a real `mlflow server` (127.0.0.1, a free port), read back through MLflow's client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from farm_sweep.sweep import tracking
from farm_sweep.sweep.runner import run_study
from farm_sweep.sweep.study import load_study
from tests.processes import free_port, start_mlflow_server, stop


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    process = start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"), port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def test_study_runs_metrics_and_artifacts_reach_the_server(ray_address: str, server: str, tmp_path: Path) -> None:
    document = {"name": "served", "trials": 2, "pruner": "none", "max_concurrent_trials": 2,
                "resources": {"cpus": 1},
                "fixed": {"dataset": "digits", "hidden_sizes": [32], "epochs": 2, "num_orderings": 2},
                "search_space": {"parameters": {"lr": {"distribution": "categorical", "choices": [0.01, 0.02]}}},
                "enqueue": [{"lr": 0.01}, {"lr": 0.02}]}
    (tmp_path / "served.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    output = tmp_path / "out"
    rows = run_study(load_study(tmp_path / "served.yaml"), output, tracking_uri=server)
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
