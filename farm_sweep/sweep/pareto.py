"""The Pareto front of a study of several objectives: its trials (Optuna's `best_trials`: no other completed trial
is at least as good on every objective and better on one), the `pareto` column of trials.csv and the trials table,
and pareto_front.csv and pareto_front.png beside trials.csv."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from farm_sweep import figures
from farm_sweep.sweep.results_table import write_table
from farm_sweep.sweep.study import Objective
from farm_sweep.sweep.tables import PARETO_KEY

FRONT_TABLE = "pareto_front.csv"
FRONT_FIGURE = "pareto_front.png"
FRONT_COLUMNS = ("trial_id", "optuna_trial", "mlflow_run_id", "checkpoint")


def mark(rows: Sequence[Mapping[str, Any]], study: optuna.Study) -> list[dict[str, Any]]:
    """The rows with `pareto`: whether the row's Optuna trial is on the study's Pareto front."""
    front = {trial.number for trial in study.best_trials}
    return [{**row, PARETO_KEY: row["optuna_trial"] in front} for row in rows]


def front_rows(rows: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]) -> list[dict[str, Any]]:
    """The front's trials, best first by the first objective: rank, ids, the objectives' values, parameters."""
    first = objectives[0]
    front = sorted((row for row in rows if row.get(PARETO_KEY)), key=lambda row: float(row[first.metric]),
                   reverse=first.direction == "maximize")
    return [{"rank": rank, **{key: row[key] for key in FRONT_COLUMNS},
             **{objective.metric: row[objective.metric] for objective in objectives},
             **{key: value for key, value in row.items() if key.startswith("param.")}}
            for rank, row in enumerate(front, start=1)]


def write_front(rows: Sequence[Mapping[str, Any]], objectives: Sequence[Objective], output: Path) -> list[Path]:
    """pareto_front.csv and pareto_front.png (the first two objectives) in `output`; none without a front."""
    front = front_rows(rows, objectives)
    if not front:
        return []
    x, y = (objective.metric for objective in objectives[:2])
    points = [figures.ObjectivePoint(str(row["trial_id"]), float(row[x]), float(row[y]), bool(row.get(PARETO_KEY)))
              for row in rows if row["status"] == "completed" and _finite(row.get(x)) and _finite(row.get(y))]
    labels = [f"{objective.metric}\n({objective.direction})" for objective in objectives[:2]]
    return [write_table(front, output / FRONT_TABLE),
            figures.objectives_front_figure(points, *labels, output / FRONT_FIGURE)]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
