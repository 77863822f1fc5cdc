"""The study's tables (farm_sweep.sweep.tables) from Tune's side: written as the study runs, complete at its end.

While the study runs, `TableRecorder` (a Tune callback, in the driver: the tables' one writer) keeps one row
per trial and epoch as the trials report them and rewrites the three tables at most every WRITE_EVERY_S
seconds. When the study ends or a signal stops it, the runner calls `write_tables` with its rows (the
statuses and MLflow runs the live tables leave open). Both start from every epoch already known: the epochs
table as last written, overlaid with each trial's reports in Ray's records (`result.json` in its folder).
An epoch reported twice (a retried or resumed trial repeats the epoch its checkpoint did not keep) is one row,
its later report; rows of trials Tune does not know (started just before a killed driver's last snapshot,
and never resumed) are left out.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from ray.air.constants import EXPR_RESULT_FILE, TIMESTAMP
from ray.tune.callback import Callback
from ray.tune.experiment import Trial
from ray.tune.result import AUTO_RESULT_KEYS, DONE, EXPERIMENT_TAG, SHOULD_CHECKPOINT, TIME_TOTAL_S, TRIAL_ID

from farm_sweep.sweep import interrupts, tables
from farm_sweep.sweep.reports import EPOCH_METRIC_KEY, PRUNED_KEY, STEP_KEY
from farm_sweep.sweep.results_table import METRIC
from farm_sweep.sweep.search_space import OPTUNA_TRIAL_KEY

WRITE_EVERY_S = 5.0
TUNE_KEYS = frozenset({*AUTO_RESULT_KEYS, DONE, SHOULD_CHECKPOINT, TRIAL_ID, EXPERIMENT_TAG})  # Tune's, not ours

log = logging.getLogger(__name__)
EpochKey = tuple[str, int]


def write_tables(output: Path, experiment: Path, study: str, records: Sequence[Mapping[str, Any]]) -> list[Path]:
    """The tables once the study ended or stopped; `records` are the runner's rows (trials.csv's)."""
    folder = output / tables.FOLDER
    epochs = known_epochs(folder, experiment, {record["trial_id"] for record in records})
    return tables.write_study(folder, study, records, epochs.values())


def known_epochs(folder: Path, experiment: Path, trial_ids: set[str]) -> dict[EpochKey, dict[str, Any]]:
    known: dict[EpochKey, dict[str, Any]] = {}
    for row in [*_written_epochs(folder), *map(epoch_row, _reports(experiment))]:
        known[(row["trial_id"], row["epoch"])] = row
    return {key: row for key, row in known.items() if key[0] in trial_ids}


def _written_epochs(folder: Path) -> list[dict[str, Any]]:
    path = folder / "epochs.parquet"
    if not path.exists():
        return []
    try:
        return tables.read(path).to_pylist()
    except tables.TableError as error:  # Ray's records still hold (nearly) every epoch
        log.warning("the epochs table is rebuilt from Ray's records alone: %s", error)
        return []


def _reports(experiment: Path) -> Iterator[dict[str, Any]]:
    """Every epoch report in Ray's records of the experiment's trials, in the order each trial made them."""
    for path in sorted(experiment.glob(f"*/{EXPR_RESULT_FILE}")):
        for line in path.read_text().splitlines():
            try:
                result = json.loads(line)
            except ValueError:  # the last line of a driver killed while writing it
                continue
            if isinstance(result, dict) and STEP_KEY in result and TRIAL_ID in result:
                yield result


def epoch_row(result: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's report as its epoch row: every number it reported but the end-of-trial evaluation, with
    Tune's report time and the seconds since the trial started."""
    reported = {key: value for key, value in result.items()
                if key not in TUNE_KEYS and not tables.is_evaluation_metric(key) and _plain(value)}
    if EPOCH_METRIC_KEY in reported:  # a final report carries the best epoch's value as its nll_image
        reported[METRIC] = reported.pop(EPOCH_METRIC_KEY)
    stamp = result.get(TIMESTAMP)
    return {"trial_id": result[TRIAL_ID], "optuna_trial": result.get("config", {}).get(OPTUNA_TRIAL_KEY),
            "wall_seconds": result.get(TIME_TOTAL_S),
            "reported_at": datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, int | float) else None,
            **reported}


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def live_record(trial: Trial) -> dict[str, Any]:
    """A trial as it stands, in the shape of the runner's rows (without MLflow run, checkpoint, failure)."""
    result = trial.last_result or {}
    return {"trial_id": trial.trial_id, "optuna_trial": trial.config.get(OPTUNA_TRIAL_KEY),
            "status": live_status(trial), "epochs": result.get(STEP_KEY, 0), METRIC: result.get(METRIC),
            "stopped_early": result.get("stopped_early"),
            **{f"{tables.PARAM_PREFIX}{key}": value for key, value in trial.config.items() if key != OPTUNA_TRIAL_KEY},
            **{key: value for key, value in result.items() if tables.is_evaluation_metric(key)}}


def live_status(trial: Trial) -> str:
    """pending, running or paused while it is; completed, pruned or failed once it ended."""
    if trial.status == Trial.ERROR:
        return "failed"
    if trial.status == Trial.TERMINATED:
        return "pruned" if trial.last_result.get(PRUNED_KEY) else "completed"
    return trial.status.lower()


class TableRecorder(Callback):
    """Rewrites the study's tables as trials report (see the module docstring). A table that cannot be written
    (a full disk) is left as it was, with a warning: the study goes on, and its end writes them again."""

    def __init__(self, output: Path, experiment: Path, study: str) -> None:
        self.folder, self.experiment, self.study = output / tables.FOLDER, experiment, study
        self._epochs: dict[EpochKey, dict[str, Any]] | None = None  # known once the first trial reports
        self._changed, self._written = False, -math.inf

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        if self._epochs is None:  # a resumed study: what the interrupted run knew
            self._epochs = known_epochs(self.folder, self.experiment, {t.trial_id for t in trials})
        row = epoch_row(result)
        self._epochs[(row["trial_id"], row["epoch"])] = row
        self._changed = True

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._changed = True

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._changed = True

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        # after a signal, Tune marks the trials it stops as ended: the runner writes their status instead
        if self._changed and time.monotonic() - self._written >= WRITE_EVERY_S and interrupts.received() is None:
            self._write(trials)

    def _write(self, trials: list[Trial]) -> None:
        self._changed, self._written = False, time.monotonic()
        try:
            tables.write_study(self.folder, self.study, [live_record(trial) for trial in trials],
                               (self._epochs or {}).values())
        except (OSError, pa.ArrowException) as error:
            log.warning("the study's tables could not be written (%s); they are written again later", error)
