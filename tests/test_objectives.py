"""Studies of several objectives (docs/studies.md, Objectives): a real local Ray, real Optuna and real MLflow
(embedded SQLite store) on a study of four one-epoch digits trials searching the Pareto front of validation
nll_image against exact sampling's network evaluations."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from ray import cloudpickle

from farm_sweep.export.command import export_study
from farm_sweep.sweep import pareto, runner, tables, tracking
from farm_sweep.sweep.pruning import PruningOptunaSearch
from farm_sweep.sweep.results_table import read_table
from farm_sweep.sweep.runner import run_study
from farm_sweep.sweep.search_space import Parameter, SearchSpace
from farm_sweep.sweep.study import load_study

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module

COST = "sampling/fixed_point/64/network_evaluations"
OBJECTIVES = [{"metric": "nll_image", "direction": "minimize"}, {"metric": COST, "direction": "minimize"}]
POINTS = [{"num_orderings": k, "lr": lr} for k in (1, 2) for lr in (3e-2, 3e-3)]


def write_study(folder: Path) -> Path:
    document = {"name": "front", "trials": len(POINTS), "max_concurrent_trials": 2, "resources": {"cpus": 1},
                "fixed": {"dataset": "digits", "hidden_sizes": [16], "epochs": 2, "batch_size": 50},
                "search_space": {"parameters": {"num_orderings": {"distribution": "categorical", "choices": [1, 2]},
                                                "lr": {"distribution": "categorical", "choices": [3e-2, 3e-3]}}},
                "enqueue": POINTS, "objectives": OBJECTIVES, "sampler": "nsga2", "pruner": "none",
                "evaluation": {"inpaint": None, "sampling": {"num_samples": 4, "timed_samples": 2}}}
    path = folder / "front.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_a_two_objective_study_finds_optunas_pareto_front_everywhere(ray_address: str, tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path))
    output = tmp_path / "out"
    rows = run_study(study, output)
    assert runner.STRICT_METRICS not in os.environ  # lenient for this study only, not the next in this process

    optuna_study = optuna.load_study(study_name="front", storage=f"sqlite:///{output / 'optuna.db'}")
    assert optuna_study.directions == [optuna.study.StudyDirection.MINIMIZE] * 2
    front = {trial.number for trial in optuna_study.best_trials}
    assert front and all(row["status"] == "completed" for row in rows)
    for row in rows:  # each Optuna trial holds both objectives as the trial reported them
        assert optuna_study.trials[row["optuna_trial"]].values == [row["nll_image"], row[COST]]

    table = read_table(output / "trials.csv")
    assert [row["pareto"] for row in table] == [str(row["optuna_trial"] in front) for row in rows]
    parquet = tables.read(output / "tables" / "trials.parquet").to_pylist()
    assert {row["trial_id"]: row["pareto"] for row in parquet} == {row["trial_id"]: row["pareto"] for row in rows}

    with open(output / pareto.FRONT_TABLE, newline="") as handle:
        listed = list(csv.DictReader(handle))
    by_nll = sorted((row for row in rows if row["pareto"]), key=lambda row: row["nll_image"])
    assert [row["trial_id"] for row in listed] == [row["trial_id"] for row in by_nll]
    assert {"rank", "nll_image", COST, "param.num_orderings", "param.lr"} <= set(listed[0])
    assert (output / pareto.FRONT_FIGURE).stat().st_size > 10_000

    client = MlflowClient(tracking.default_uri(output))
    parent = client.get_run(tracking.load(output).parent_run_id)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "study")} >= {
        f"study/{pareto.FRONT_TABLE}", f"study/{pareto.FRONT_FIGURE}", "study/trials.csv"}
    assert parent.data.tags["farm.pareto_trial_ids"] == ",".join(row["trial_id"] for row in by_nll)
    assert "farm.best_trial_id" not in parent.data.tags

    lines = runner.summary(rows, 1.0, output, tracking.default_uri(output), "", objectives=study.objectives)
    assert f"Pareto front: {len(by_nll)} trial(s), by nll_image ({pareto.FRONT_TABLE}):" in lines
    assert not any(line.startswith("best:") for line in lines)

    exported = export_study(output, 2, tmp_path / "exports")
    assert [folder.name for folder in exported] == [f"{rank:02d}_{row['trial_id']}"
                                                    for rank, row in enumerate(by_nll[:2], start=1)]


def test_a_trial_without_every_objective_fails_in_optuna() -> None:
    """Ray's OptunaSearch would leave it RUNNING; a missing objective fails the trial (it stays off the front)."""
    space = SearchSpace((Parameter("lr", "categorical", choices=(1e-2, 1e-3)),))
    searcher = PruningOptunaSearch(space=space, metric=["nll_image", COST], mode=["min", "min"],
                                   sampler=optuna.samplers.NSGAIISampler(seed=0))
    for trial_id, result in (("reported", {"nll_image": 40.0, COST: 12.0}), ("missing", {"nll_image": 39.0})):
        searcher.suggest(trial_id)
        searcher.on_trial_complete(trial_id, result)
    states = [trial.state for trial in searcher._ot_study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert [trial.number for trial in searcher._ot_study.best_trials] == [0]


@pytest.mark.parametrize(("changes", "field", "reason"), [
    ({"pruner": "median"}, "pruner", "median cannot prune a study of 2 objectives"),
    ({"objectives": [OBJECTIVES[1], OBJECTIVES[1]]}, "objectives", "is listed twice"),
    ({"objectives": [OBJECTIVES[0], {"metric": COST, "direction": "smaller"}]}, "objectives[1].direction",
     "choose one of minimize, maximize"),
    ({"evaluation": {"inpaint": {}, "sampling": None}}, "objectives[1].metric", "add evaluation.sampling"),
    ({"objectives": [OBJECTIVES[0], {"metric": "sampling/fixed_point/64/speed", "direction": "minimize"}]},
     "objectives[1].metric", "the speed-quality curve has no field 'speed'"),
])
def test_bad_objectives_exit_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                changes: dict, field: str, reason: str) -> None:
    path = write_study(tmp_path)
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **changes}, sort_keys=False))
    assert runner.main([str(path), "--dry-run", "--output", str(tmp_path / "out")]) == 2
    message = capsys.readouterr().err
    assert f"{path}: {field}: " in message and reason in message and "; " in message, message
    assert not (tmp_path / "out").exists()


def test_the_shipped_speed_quality_study_searches_a_front() -> None:
    study = load_study(Path(__file__).resolve().parents[1] / "studies" / "speed_quality.yaml")
    assert [o.metric for o in study.objectives] == ["nll_image", COST] and study.pruner.type == "none"
    assert {p.name for p in study.space.parameters} >= {"num_orderings", "ordering_family"}
    assert study.sampler.type == "nsga2"
