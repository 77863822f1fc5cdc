"""Whole studies on a real local Ray (2 CPUs), real Optuna and real MLflow (embedded SQLite store).

Tiny on purpose: digits, one hidden layer of 32, 4 epochs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from ray import cloudpickle, tune

import farm_sweep.sweep.trial as trial_module
from farm_sweep.sweep import repeats, results_command, tracking
from farm_sweep.sweep.pruning import PruningOptunaSearch
from farm_sweep.sweep.results_table import read_table
from farm_sweep.sweep.runner import run_study
from farm_sweep.sweep.search_space import OPTUNA_TRIAL_KEY
from farm_sweep.sweep.study import load_study
from farm_sweep.sweep.trial import TrialContext, run_trial
from tests.test_tables import check_study_tables

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module

ROOT = Path(__file__).resolve().parents[1]
FIXED = {"dataset": "digits", "hidden_sizes": [32], "epochs": 4, "batch_size": 50}
GOOD, BAD = (2e-2, 1e-2), (1e-6, 1e-7)


def write_study(folder: Path, name: str, **settings: Any) -> Path:
    document = {"name": name, "fixed": FIXED, "max_concurrent_trials": 2, "resources": {"cpus": 1},
                "search_space": {"parameters": {"lr": {"distribution": "categorical", "choices": [*GOOD, *BAD]}}},
                **settings}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def child_runs(output: Path, name: str) -> list[Any]:
    client = MlflowClient(tracking.default_uri(output))
    experiment = client.get_experiment_by_name(name)
    return [run for run in client.search_runs([experiment.experiment_id])
            if tracking.TRIAL_TAG in run.data.tags]


def metric_steps(output: Path, run_id: str) -> list[int]:
    return [m.step for m in MlflowClient(tracking.default_uri(output)).get_metric_history(run_id, "nll_image")]


def test_pruner_stops_bad_trials_and_every_system_records_it(ray_address: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # One at a time: a good learning rate first, then the two hopeless ones (lr 1e-6, 1e-7), which the
    # median pruner stops at epoch 1 against the completed good trial; one more is sampled by TPE.
    study = load_study(write_study(tmp_path, "pruning", trials=4, max_failures=0, max_concurrent_trials=1,
                                   pruner={"type": "median", "n_startup_trials": 1, "n_warmup_steps": 1},
                                   enqueue=[{"lr": lr} for lr in (GOOD[0], *BAD)]))
    output = tmp_path / "out"
    rows = run_study(study, output)

    assert [row["optuna_trial"] for row in rows] == [0, 1, 2, 3]
    assert [(row["status"], row["epochs"]) for row in rows[:3]] == [("completed", 4), ("pruned", 1), ("pruned", 1)]
    for row in rows[3:]:  # sampled by TPE
        assert row["param.lr"] in (*GOOD, *BAD) and (row["epochs"] == 4) == (row["status"] == "completed")

    ray_trials = tune.ExperimentAnalysis(str(output / "ray" / "pruning")).trials
    assert sorted(t.last_result["pruned"] for t in ray_trials) == sorted(r["status"] == "pruned" for r in rows)

    optuna_trials = optuna.load_study(study_name="pruning", storage=f"sqlite:///{output / 'optuna.db'}").trials
    for row in rows:
        frozen = optuna_trials[row["optuna_trial"]]
        assert frozen.state.name == {"completed": "COMPLETE", "pruned": "PRUNED"}[row["status"]]
        assert sorted(frozen.intermediate_values) == list(range(1, row["epochs"] + 1))

    runs = {run.data.tags[tracking.TRIAL_TAG]: run for run in child_runs(output, "pruning")}
    assert len(runs) == 4
    for row in rows:
        run = runs[row["trial_id"]]
        assert run.data.tags[tracking.STATUS_TAG] == row["status"] and run.info.status == "FINISHED"
        assert metric_steps(output, run.info.run_id) == list(range(1, row["epochs"] + 1))
        assert run.data.params["lr"] == str(row["param.lr"])
    parent = {run.data.tags["mlflow.parentRunId"] for run in runs.values()}
    assert len(parent) == 1
    client = MlflowClient(tracking.default_uri(output))
    assert {a.path for a in client.list_artifacts(parent.pop(), "study")} >= {
        "study/trials.csv", "study/learning_curves.png", "study/trials.parquet", "study/epochs.parquet",
        "study/evaluation.parquet"}
    assert [a.path for a in client.list_artifacts(runs[rows[0]["trial_id"]].info.run_id)] == ["checkpoint"]

    assert [row["status"] for row in read_table(output / "trials.csv")] == [row["status"] for row in rows]
    printed = capsys.readouterr().out
    assert printed.count("completed after epoch 4") == sum(r["status"] == "completed" for r in rows)
    assert "epoch 1/4 nll_image" in printed and "pruned after epoch 1" in printed

    found = check_study_tables(output, "pruning")
    assert [(t["trial_id"], t["status"], t["param.lr"]) for t in found["trials"]] == [
        (row["trial_id"], row["status"], row["param.lr"]) for row in rows]
    assert len(found["epochs"]) == sum(row["epochs"] for row in rows) and found["evaluation"] == []
    assert results_command.main([str(output), "--table", "epochs", "--format", "csv"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + len(found["epochs"])


def test_a_proposal_repeating_a_completed_trial_is_answered_from_it(ray_address: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Two configurations and 6 trials: each is trained once; every later proposal repeats a completed trial and
    is answered with its value, until repeats.MAX_IN_A_ROW in a row end the search."""
    study = load_study(write_study(tmp_path, "repeats", trials=6, pruner="none", max_concurrent_trials=1,
                                   sampler={"type": "random"}, fixed={**FIXED, "epochs": 1},
                                   search_space={"parameters": {"lr": {"distribution": "categorical",
                                                                       "choices": list(GOOD)}}}))
    output = tmp_path / "out"
    rows = run_study(study, output)

    assert sorted(row["param.lr"] for row in rows) == sorted(GOOD)
    assert {row["status"] for row in rows} == {"completed"}
    trials = optuna.load_study(study_name="repeats", storage=f"sqlite:///{output / 'optuna.db'}").trials
    answered = [trial for trial in trials if repeats.REPEAT_OF_ATTR in trial.user_attrs]
    assert len(answered) >= repeats.MAX_IN_A_ROW and len(trials) == len(rows) + len(answered)
    for trial in answered:
        twin = trials[trial.user_attrs[repeats.REPEAT_OF_ATTR]]
        assert twin.number in {row["optuna_trial"] for row in rows}
        assert (trial.state.name, trial.params, trial.value) == ("COMPLETE", twin.params, twin.value)
    printed = capsys.readouterr().out
    assert printed.count("not trained again") == len(answered) and repeats.EXHAUSTED in printed


def fail_once_after_epoch_2(config: dict[str, Any], context: TrialContext) -> None:
    """run_trial, except that the first attempt crashes right after reporting epoch 2."""
    marker = Path(tune.get_context().get_trial_dir()) / "failed_once"
    real_train = trial_module.train

    def train(*args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for metrics in real_train(*args, **kwargs):
            yield metrics
            if metrics["epoch"] == 2 and not marker.exists():
                marker.touch()
                raise RuntimeError("injected failure after epoch 2")

    with mock.patch.object(trial_module, "train", train):
        run_trial(config, context)


def test_failed_trial_is_retried_from_its_latest_checkpoint(ray_address: str, tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path, "retry", trials=1, max_failures=1, enqueue=[{"lr": GOOD[0]}]))
    output = tmp_path / "out"
    (row,) = run_study(study, output, trainable=fail_once_after_epoch_2)
    assert (row["status"], row["epochs"]) == ("completed", 4)
    (result,) = tune.ExperimentAnalysis(str(output / "ray" / "retry")).trial_dataframes.values()
    assert list(result["epoch"]) == [1, 2, 3, 4]  # resumed at epoch 3, not restarted at 1
    (run,) = child_runs(output, "retry")
    assert metric_steps(output, run.info.run_id) == [1, 2, 3, 4]
    assert run.data.tags[tracking.STATUS_TAG] == "completed"


def test_a_trial_restored_without_the_searchers_record_is_told_by_its_number(tmp_path: Path) -> None:
    """A driver killed while Tune copied a snapshot can leave a searcher state older than the trials Tune
    restores: such a trial is told to Optuna by the number in its config, and one without it does not crash
    the search (the end of the search fails its Optuna trial)."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="restored", storage=storage)
    for _ in range(2):
        study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1)})
    searcher = PruningOptunaSearch(space={"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1)},
                                   metric="nll_image", mode="min", study_name="restored", storage=storage)
    searcher.on_trial_complete("a1b2c3d4", result={"nll_image": 3.5, f"config/{OPTUNA_TRIAL_KEY}": 0})
    searcher.on_trial_complete("e5f6a7b8", error=True)
    trials = optuna.load_study(study_name="restored", storage=storage).trials
    assert [(trial.state.name, trial.value) for trial in trials] == [("COMPLETE", 3.5), ("RUNNING", None)]
