"""A study's typed tables (farm_sweep.sweep.tables) and the `results` command, on rows made here; and
`check_study_tables`, which the whole studies of test_sweep, test_reliability and test_own_data run against
Ray's and Optuna's records."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray import tune

from farm_sweep import cli
from farm_sweep.sweep import results_command, tables

OPTUNA_STATES = {"completed": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL", "interrupted": "RUNNING"}


def at(second: int) -> datetime:
    return datetime.fromtimestamp(1_800_000_000 + second, UTC)


def record(trial_id: str, number: int, status: str, epochs: int, **values: Any) -> dict[str, Any]:
    """A trial as the runner's rows (trials.csv) have it."""
    return {"trial_id": trial_id, "optuna_trial": number, "status": status, "epochs": epochs, "failure_reason": "",
            "nll_image": values.pop("nll_image", None), "mlflow_run_id": f"run{number}", "checkpoint": "", **values}


def epoch(trial_id: str, number: int, index: int, nll_image: float, **values: Any) -> dict[str, Any]:
    return {"trial_id": trial_id, "optuna_trial": number, "epoch": index, "nll_image": nll_image, "train_loss": 0.5,
            "seconds": 2.0, "wall_seconds": 10.0 + 3 * index, "reported_at": at(10 + 3 * index), **values}


def small_study(folder: Path, name: str = "small", lr: Any = 0.01) -> list[Path]:
    """Two trials: a completed one with an evaluation, and a pruned one with early stopping whose conditional
    parameter is absent."""
    records = [
        record("b", 1, "pruned", 2, nll_image=39.9, **{"param.lr": lr, "param.hidden_sizes": [8, 8],
                                                       "param.direct": False}),
        record("a", 0, "completed", 3, nll_image=30.0, stopped_early=False,
               **{"param.lr": 0.02, "param.hidden_sizes": [8], "param.direct": True, "param.weight": 0.5,
                  "inpaint/best/single/l2": 0.25, "inpaint/best/single/nll_exact": 1.5,
                  "sampling/sequential/1/speedup": 1.0, "sampling/sequential/1/classifier_score": 2.5,
                  "sampling/fixed_point/8/speedup": 6.0, "sampling/fixed_point/8/classifier_score": 2.0}),
    ]
    epochs = [epoch("a", 0, 3, 30.5), epoch("a", 0, 1, 35.0), epoch("a", 0, 2, 30.0, divergence=0.1),
              epoch("b", 1, 1, 40.0, best_epoch=1), epoch("b", 1, 2, 39.9, best_epoch=1)]
    return tables.write_study(folder, name, records, epochs)


def test_columns_keep_their_types_and_rows_their_order(tmp_path: Path) -> None:
    trials_path, epochs_path, evaluation_path = small_study(tmp_path)
    trials = tables.read(trials_path)
    assert dict(zip(trials.column_names, trials.schema.types)) == {
        **tables.COLUMNS["trials"], "param.lr": pa.float64(), "param.hidden_sizes": pa.list_(pa.int64()),
        "param.direct": pa.bool_(), "param.weight": pa.float64()}
    a, b = trials.to_pylist()
    assert (a["trial_id"], b["trial_id"]) == ("a", "b")  # in Optuna's order
    assert (a["best_epoch"], a["best_nll_image"], a["last_nll_image"], a["nll_image"]) == (2, 30.0, 30.5, 30.0)
    assert (a["started_at"], a["last_report_at"]) == (at(0), at(19)) and a["train_seconds"] == 6.0
    assert (a["failure_reason"], a["checkpoint"], b["param.weight"], b["stopped_early"]) == (None, None, None, None)
    assert (b["best_epoch"], b["best_nll_image"]) == (1, 40.0)  # the epoch early stopping kept, not the lowest
    assert a["param.hidden_sizes"] == [8] and b["param.direct"] is False
    assert "inpaint/best/single/l2" not in trials.column_names  # evaluation.parquet holds those

    epochs = tables.read(epochs_path)
    assert [(row["trial_id"], row["epoch"]) for row in epochs.to_pylist()] == [("a", 1), ("a", 2), ("a", 3), ("b", 1),
                                                                                   ("b", 2)]
    assert epochs.schema.field("reported_at").type == tables.TIMESTAMP
    assert epochs.column("divergence").to_pylist() == [None, 0.1, None, None, None]

    evaluation = tables.read(evaluation_path).to_pylist()
    assert [(row["kind"], row["case"], row["fill"], row["sampler"], row["knob"]) for row in evaluation] == [
        ("inpaint", "best", "single", None, None), ("sampling", None, None, "sequential", "1"),
        ("sampling", None, None, "fixed_point", "8")]
    assert (evaluation[0]["nll_exact"], evaluation[2]["speedup"], evaluation[2]["classifier_score"]) == (1.5, 6.0, 2.0)
    metadata = pq.read_schema(evaluation_path).metadata
    assert metadata[tables.VERSION_KEY] == tables.SCHEMA_VERSION.encode() and metadata[tables.STUDY_KEY] == b"small"


def test_a_parameter_of_mixed_types_is_json_text_and_a_new_table_is_one_call(tmp_path: Path) -> None:
    trials_path, *_ = small_study(tmp_path, lr="auto")
    assert tables.read(trials_path).column("param.lr").to_pylist() == ["0.02", '"auto"']
    rows = [{"trial_id": "a", "repeat": 1, "seed": 7, "nll_image_test": 88.4, "passed": True},
            {"trial_id": "a", "repeat": 2, "seed": 8, "nll_image_test": math.nan, "passed": None}]
    repeats = tables.read(tables.write(tmp_path, "repeats", rows, "small"))
    assert repeats.schema.types == [pa.string(), pa.int64(), pa.int64(), pa.float64(), pa.bool_()]
    assert repeats.schema.metadata[tables.TABLE_KEY] == b"repeats"


def test_a_table_rewritten_onto_a_full_disk_keeps_the_previous_one(tmp_path: Path) -> None:
    (trials_path, *_) = small_study(tmp_path)
    before = trials_path.read_bytes()
    (tmp_path / ".trials.parquet.tmp").symlink_to("/dev/full")
    with pytest.raises(OSError):
        tables.write(tmp_path, "trials", [{"trial_id": "c"}])
    assert trials_path.read_bytes() == before


def test_results_command_prints_and_converts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small_study(tmp_path / "one" / tables.FOLDER, "one")
    small_study(tmp_path / "two" / tables.FOLDER, "two")
    assert cli.main(["results", str(tmp_path / "one"), "--table", "epochs", "--format", "csv"]) == 0
    lines = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(line["trial_id"], line["epoch"], line["divergence"]) for line in lines] == [
        ("a", "1", ""), ("a", "2", "0.1"), ("a", "3", ""), ("b", "1", ""), ("b", "2", "")]
    assert results_command.main([str(tmp_path / "one" / tables.FOLDER), str(tmp_path / "two"), "--format",
                                 "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(row["study"], row["trial_id"]) for row in rows] == [("one", "a"), ("one", "b"), ("two", "a"), ("two", "b")]
    assert rows[0]["param.hidden_sizes"] == [8] and rows[0]["started_at"] == at(0).isoformat()
    assert results_command.main([str(tmp_path / "one"), str(tmp_path / "one")]) == 0  # the same name twice
    header, first, *_ = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["study", "trial_id", "optuna_trial"] and first.startswith(str(tmp_path / "one"))


def test_results_command_refuses_what_is_not_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small_study(tmp_path / "old" / tables.FOLDER)
    old = tmp_path / "old" / tables.FOLDER / "trials.parquet"
    pq.write_table(pq.read_table(old).replace_schema_metadata({tables.VERSION_KEY: b"0"}), old)
    (tmp_path / "text" / tables.FOLDER).mkdir(parents=True)
    (tmp_path / "text" / tables.FOLDER / "trials.parquet").write_text("trial_id\na\n")
    small_study(tmp_path / "typed" / tables.FOLDER, "typed", lr="auto")
    small_study(tmp_path / "numeric" / tables.FOLDER, "numeric")
    cases = {(str(tmp_path / "missing"),): ("missing'", "STUDY_OR_OUTPUT_DIR: no tables/trials.parquet there",
                                            "give the output folder of a study"),
             (str(tmp_path / "old"),): (str(old), "farm_sweep.schema_version: '0'", "run the study again"),
             (str(tmp_path / "text"),): ("text/tables/trials.parquet", "not a readable Parquet table",
                                         "give a study's output folder"),
             (str(tmp_path / "typed"), str(tmp_path / "numeric")): ("param.lr", "read the studies one at a time")}
    for arguments, expected in cases.items():
        assert results_command.main(list(arguments)) == 2
        message = capsys.readouterr().err
        assert all(text in message for text in expected) and "Traceback" not in message, message


def check_study_tables(output: Path, name: str) -> dict[str, list[dict[str, Any]]]:
    """The tables of a study that ended, read back: typed, one trial row per Ray trial and Optuna trial, one
    epoch row per epoch Ray recorded (an epoch reported twice is one row) and Optuna's intermediate values."""
    folder = output / tables.FOLDER
    read = {table: tables.read(folder / f"{table}.parquet") for table in ("trials", "epochs", "evaluation")}
    for table, contents in read.items():
        types = dict(zip(contents.column_names, contents.schema.types))
        assert {column: types[column] for column in tables.COLUMNS[table]} == tables.COLUMNS[table], table
    trials, epochs = read["trials"].to_pylist(), read["epochs"].to_pylist()
    analysis = tune.ExperimentAnalysis(str(output / "ray" / name))
    ray_epochs = {trial_id: sorted(set(frame["epoch"])) for trial_id, frame in analysis.trial_dataframes.items()
                  if "epoch" in frame}
    table_epochs: dict[str, list[int]] = {}
    for row in epochs:
        table_epochs.setdefault(row["trial_id"], []).append(row["epoch"])
    assert table_epochs == ray_epochs
    assert sorted(trial["trial_id"] for trial in trials) == sorted(trial.trial_id for trial in analysis.trials)
    optuna_trials = optuna.load_study(study_name=name, storage=f"sqlite:///{output / 'optuna.db'}").trials
    for trial in trials:
        found = table_epochs.get(trial["trial_id"], [])
        assert found == list(range(1, trial["epochs"] + 1)), trial
        frozen = optuna_trials[trial["optuna_trial"]]
        assert sorted(frozen.intermediate_values) == found and frozen.state.name == OPTUNA_STATES[trial["status"]]
        if trial["status"] == "completed":
            assert frozen.value == pytest.approx(trial["nll_image"]) and trial["mlflow_run_id"]
    return {table: contents.to_pylist() for table, contents in read.items()}
