"""A study's typed tables: `<output>/tables/*.parquet` (docs/studies.md lists every column).

trials.parquet holds one row per trial, epochs.parquet one per trial and epoch, evaluation.parquet one per
trial and evaluated setting (an inpainting case and fill, a sampler and knob). `write(folder, name, rows)`
turns plain dicts into a Parquet file: the columns `COLUMNS` names get their fixed types, every other column
the type its values share (lists stay lists, booleans booleans, a missing value is null; values of no common
type are written as JSON text), the file's metadata holds the schema version, the table's name and the
study's, and the file is written beside its place and renamed over it, so a reader never sees half a table.
confirmation.parquet holds a confirmation stage's rows (farm_sweep.sweep.confirmation_table). Another table
is one more `write` call; its fixed columns in `COLUMNS` also let `python -m farm_sweep.results --table NAME`
read it. `read(path)` checks the version.

This module needs pyarrow alone (no Ray), so the `results` command starts quickly.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

FOLDER = "tables"
SCHEMA_VERSION = "1"
VERSION_KEY, TABLE_KEY, STUDY_KEY = b"farm_sweep.schema_version", b"farm_sweep.table", b"farm_sweep.study"
PARAM_PREFIX = "param."
TIMESTAMP = pa.timestamp("ms", tz="UTC")
_ID = {"trial_id": pa.string(), "optuna_trial": pa.int64()}
COLUMNS: dict[str, dict[str, pa.DataType]] = {  # each table's fixed columns, in order; parameters follow
    "trials": {**_ID, "status": pa.string(), "epochs": pa.int64(), "failure_reason": pa.string(),
               "nll_image": pa.float64(), "best_epoch": pa.int64(), "best_nll_image": pa.float64(),
               "last_nll_image": pa.float64(), "last_train_loss": pa.float64(), "stopped_early": pa.bool_(),
               "started_at": TIMESTAMP, "last_report_at": TIMESTAMP, "train_seconds": pa.float64(),
               "wall_seconds": pa.float64(), "mlflow_run_id": pa.string(), "checkpoint": pa.string()},
    "epochs": {**_ID, "epoch": pa.int64(), "nll_image": pa.float64(), "train_loss": pa.float64(),
               "seconds": pa.float64(), "wall_seconds": pa.float64(), "reported_at": TIMESTAMP},
    "evaluation": {**_ID, "kind": pa.string(), "case": pa.string(), "fill": pa.string(), "sampler": pa.string(),
                   "knob": pa.string(), "network_evaluations": pa.float64(), "wall_seconds": pa.float64(),
                   "speedup": pa.float64(), "evaluation_speedup": pa.float64(),
                   "classifier_score": pa.float64(), "frechet_distance": pa.float64()},
    "confirmation": {"kind": pa.string(), "search_rank": pa.int64(), "confirmed_rank": pa.int64(),
                     "config_id": pa.string(), "seed": pa.int64(), "n": pa.int64(), "status": pa.string(),
                     "nll_image": pa.float64(), "test/nll_image": pa.float64()},
}
TABLES = tuple(COLUMNS)
SETTINGS = {"inpaint": ("case", "fill"), "sampling": ("sampler", "knob")}  # what names an evaluated setting
_EVALUATION = re.compile(r"^(?P<kind>inpaint|sampling)/(?P<first>[^/]+)/(?P<second>[^/]+)/(?P<metric>[^/]+)$")
_FROM_RECORD = ("trial_id", "optuna_trial", "status", "epochs", "failure_reason", "nll_image", "stopped_early",
                "mlflow_run_id", "checkpoint")
PARETO_KEY = "pareto"  # a study of several objectives: the trial is on its Pareto front (farm_sweep.sweep.pareto)


class TableError(ValueError):
    """A file that is not one of these tables, or of another schema version; the message names the file."""


def write(folder: Path, name: str, rows: Sequence[Mapping[str, Any]], study: str = "") -> Path:
    """`<folder>/<name>.parquet` from `rows`, replacing the previous file only once the new one is whole."""
    table = to_arrow(name, rows, study)
    folder.mkdir(parents=True, exist_ok=True)
    path, staging = folder / f"{name}.parquet", folder / f".{name}.parquet.tmp"
    pq.write_table(table, staging)
    os.replace(staging, path)
    return path


def to_arrow(name: str, rows: Sequence[Mapping[str, Any]], study: str = "") -> pa.Table:
    fixed = COLUMNS.get(name, {})
    names = list(dict.fromkeys([*fixed, *(key for row in rows for key in row)]))
    columns = {column: _array([row.get(column) for row in rows], fixed.get(column)) for column in names}
    metadata = {VERSION_KEY: SCHEMA_VERSION.encode(), TABLE_KEY: name.encode(), STUDY_KEY: study.encode()}
    return pa.table(columns).replace_schema_metadata(metadata)


def _array(values: list[Any], fixed: pa.DataType | None) -> pa.Array:
    if fixed is not None:
        return pa.array(values, type=fixed)
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # e.g. a categorical parameter with choices 0.1 and "none"
        return pa.array([None if value is None else json.dumps(value) for value in values], type=pa.string())


def read(path: Path) -> pa.Table:
    """The table in `path`; TableError when it is not a regular file, not Parquet, or of another version."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise TableError(f"{path}: not a regular file; give a study's output folder or one of its tables")
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise TableError(f"{path}: not a readable Parquet table ({_first_line(error)}); give a study's output "
                         "folder") from None
    version = (table.schema.metadata or {}).get(VERSION_KEY, b"none").decode(errors="replace")
    if version != SCHEMA_VERSION:
        raise TableError(f"{path}: {VERSION_KEY.decode()}: {version!r}, but this version of farm_sweep reads "
                         f"{SCHEMA_VERSION!r}; read it with the farm_sweep that wrote it, or run the study again")
    return table


def study_name(table: pa.Table) -> str:
    return (table.schema.metadata or {}).get(STUDY_KEY, b"").decode(errors="replace")


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def write_study(folder: Path, study: str, records: Sequence[Mapping[str, Any]],
                epochs: Iterable[Mapping[str, Any]]) -> list[Path]:
    """The three tables of a study: `records` are trials.csv's rows (ids, status, the last report's metrics
    including the evaluation's, `param.*`), `epochs` one row per trial and epoch."""
    records = sorted(records, key=_trial_order)
    epochs = sorted(epochs, key=lambda row: (*_trial_order(row), row["epoch"]))
    evaluation = [row for record in records for row in evaluation_rows(record)]
    return [write(folder, "trials", trial_rows(records, epochs), study), write(folder, "epochs", epochs, study),
            write(folder, "evaluation", evaluation, study)]


def _trial_order(row: Mapping[str, Any]) -> tuple[bool, int, str]:
    return row["optuna_trial"] is None, row["optuna_trial"] or 0, row["trial_id"]


def trial_rows(records: Sequence[Mapping[str, Any]], epochs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per record, with its best and last epoch and its timing taken from its epoch rows (by epoch)."""
    by_trial: dict[str, list[Mapping[str, Any]]] = {}
    for row in epochs:
        by_trial.setdefault(row["trial_id"], []).append(row)
    return [_trial_row(record, by_trial.get(record["trial_id"], [])) for record in records]


def _trial_row(record: Mapping[str, Any], epochs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    row = {key: None if record.get(key) == "" else record.get(key) for key in _FROM_RECORD}
    first, last = (epochs[0], epochs[-1]) if epochs else ({}, {})
    best = _best_epoch(epochs, last.get("best_epoch"))
    started = first.get("reported_at") and first["reported_at"] - timedelta(seconds=first.get("wall_seconds") or 0)
    seconds = [epoch["seconds"] for epoch in epochs if _finite(epoch.get("seconds"))]
    return {**row, "best_epoch": best.get("epoch"), "best_nll_image": best.get("nll_image"),
            "last_nll_image": last.get("nll_image"), "last_train_loss": last.get("train_loss"),
            "started_at": started, "last_report_at": last.get("reported_at"),
            "train_seconds": sum(seconds) if seconds else None, "wall_seconds": last.get("wall_seconds"),
            **{key: record[key] for key in (PARETO_KEY,) if key in record},
            **{key: value for key, value in record.items() if key.startswith(PARAM_PREFIX)}}


def _best_epoch(epochs: Sequence[Mapping[str, Any]], kept: int | None) -> Mapping[str, Any]:
    """The epoch a trial with early stopping kept (its rule's min_delta decides), else the one with the lowest
    validation nll_image (the first of equals)."""
    if kept is not None:
        return next((epoch for epoch in epochs if epoch["epoch"] == kept), {})
    scored = [epoch for epoch in epochs if _finite(epoch.get("nll_image"))]
    return min(scored, key=lambda epoch: epoch["nll_image"], default={})


def evaluation_rows(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A trial's end-of-trial metrics (`inpaint/<case>/<fill>/<metric>`, `sampling/<sampler>/<knob>/<field>`,
    farm_sweep.evaluation.end_of_trial) as one row per kind and setting."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for key, value in record.items():
        match = _EVALUATION.match(key)
        if match:
            first, second = SETTINGS[match["kind"]]
            row = rows.setdefault((match["kind"], match["first"], match["second"]), {
                "trial_id": record["trial_id"], "optuna_trial": record.get("optuna_trial"), "kind": match["kind"],
                first: match["first"], second: match["second"]})
            row[match["metric"]] = value
    return list(rows.values())


def is_evaluation_metric(key: str) -> bool:
    return _EVALUATION.match(key) is not None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
