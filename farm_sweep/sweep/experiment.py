"""What the search and the confirmation stage share as Ray Tune experiments of one study: where Tune keeps them,
the resources of a trial, the run configuration (retries, checkpoints kept, the callbacks every experiment
has), trial names, the progress lines the driver prints, and a finished trial's status as the tables tell it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.callback import Callback
from ray.tune.experiment import Trial

from farm_sweep.sweep import interrupts, stores, tracking, tune_state
from farm_sweep.sweep.reports import FINAL_STEP_KEY, PRUNED_KEY, STEP_KEY
from farm_sweep.sweep.results_table import METRIC
from farm_sweep.sweep.search_space import point_text
from farm_sweep.sweep.study import Study
from farm_sweep.sweep.trial import TrialContext

MODE = "min"
RAY_FOLDER = "ray"  # Tune's storage folder in a study's output folder
# Tune deletes a trial's oldest checkpoint as it registers a newer one; a killed driver's last snapshot can lag
# a few fast epochs behind, and --resume needs the checkpoint that snapshot names (docs/reliability.md).
CHECKPOINTS_KEPT = 3
EVALUATION_PREFIXES = ("inpaint/", "sampling/", "test/")  # evaluation metrics (test/: the confirmation's)

Trainable = Callable[[dict[str, Any], TrialContext], None]
Label = Callable[[dict[str, Any]], Mapping[str, Any]]  # what a progress line shows of a trial's config


def trainable(function: Trainable, context: TrialContext, study: Study) -> Any:
    """`function` as a Tune trainable with the study's resources per trial (a GPU only when the cluster has one),
    with the passwords of the study's stores (stores.secrets), which its trials need to log to a database."""
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    resources = {"cpu": study.resources.cpus, "gpu": study.resources.gpus if has_gpu else 0,
                 **study.resources.custom}
    context = replace(context, secrets=stores.secrets())
    return tune.with_resources(tune.with_parameters(function, context=context), resources)


def run_config(study: Study, output: Path, name: str, tracker: tracking.Tracker, *, first: Sequence[Callback] = (),
               scope: str = "", label: Label = dict) -> tune.RunConfig:
    """Tune's run configuration of experiment `name` in <output>/ray/: the study's retries, CHECKPOINTS_KEPT
    checkpoints per trial, and the callbacks (`first`, then tracking, progress lines that show a trial's
    `label(config)`, signals, and the record of Tune's state under `scope` that --resume checks)."""
    return tune.RunConfig(
        name=name, storage_path=str(output / RAY_FOLDER), verbose=0,
        failure_config=tune.FailureConfig(max_failures=study.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT),
        callbacks=[*first, tracking.TrackingCallback(tracker), ProgressPrinter(label), interrupts.StopOnSignal(),
                   tune_state.StateRecorder(output, scope)])


def trial_name(trial: Trial) -> str:
    """`trial_<id>`: the Ray trial and its folder (the MLflow child run is named by its parameters)."""
    return f"trial_{trial.trial_id}"


class ProgressPrinter(Callback):
    """One line per trial result and per trial end, printed by the driver."""

    def __init__(self, label: Label = dict) -> None:
        self.label = label

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        status = "pruned" if result.get(PRUNED_KEY) else "running"
        print(f"{trial.trial_id} {point_text(self.label(trial.config))} epoch {result['epoch']}/"
              f"{result[FINAL_STEP_KEY]} {METRIC} {result[METRIC]:.3f} {status}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        status = "pruned" if trial.last_result.get(PRUNED_KEY) else "completed"
        print(f"{trial.trial_id} {status} after epoch {trial.last_result.get('epoch')}", flush=True)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        print(f"{trial.trial_id} failed (error: {trial.error_file})", flush=True)


class AlreadyDeletedCheckpoint(logging.Filter):
    """Drops Tune's traceback for deleting an older checkpoint of a trial that is already gone.

    After a killed driver, --resume restores Tune's bookkeeping from its last snapshot, which can still list
    a checkpoint Tune deleted after that snapshot; deleting it again fails with FileNotFoundError, which Tune
    logs with a traceback although the new checkpoint is registered all the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, FileNotFoundError) and "Error handling checkpoint" in str(record.msg))


def quiet_deleted_checkpoints() -> None:
    """Keep the traceback AlreadyDeletedCheckpoint describes out of the log of a resumed experiment."""
    logging.getLogger("ray.tune.execution.tune_controller").addFilter(AlreadyDeletedCheckpoint())


def outcome(trial: Trial, result: tune.Result, tracker: tracking.Tracker, output: Path) -> dict[str, Any]:
    """The columns every table row of a trial has: status, epochs, failure reason, the validation metric and
    training loss of its last report, early stopping's best epoch, its MLflow run and its checkpoint."""
    metrics = trial.last_result or {}
    state = _status(trial)
    return {"status": state, "epochs": metrics.get(STEP_KEY, 0),
            "failure_reason": _failure_reason(result.error) if state == "failed" else "",
            METRIC: metrics.get(METRIC), "train_loss": metrics.get("train_loss"),
            **{key: metrics[key] for key in ("best_epoch", "stopped_early") if key in metrics},
            "mlflow_run_id": tracker.run_of(trial.trial_id),
            "checkpoint": _relative(result.checkpoint.path if result.checkpoint else "", output)}


def evaluation_metrics(trial: Trial) -> dict[str, Any]:
    """The end-of-trial evaluation's metrics in the trial's last report (per-ordering likelihoods left out)."""
    return {key: value for key, value in (trial.last_result or {}).items()
            if key.startswith(EVALUATION_PREFIXES) and "_ordering_" not in key}


def _status(trial: Trial) -> str:
    """completed, pruned, failed, interrupted (unfinished when a signal stopped the study: --resume continues
    it), or incomplete (ended without an error before its last epoch, which no trial here does)."""
    if trial.status == Trial.ERROR:
        return "failed"
    if trial.last_result.get(PRUNED_KEY):
        return "pruned"
    if trial.status != Trial.TERMINATED:
        return "interrupted"
    epoch = trial.last_result.get(STEP_KEY)
    return "completed" if epoch is not None and epoch == trial.last_result.get(FINAL_STEP_KEY) else "incomplete"


def _failure_reason(error: Exception | None) -> str:
    """The root cause of a failed trial, in one line (Ray wraps it in its own error types)."""
    while error is not None and error.__cause__ is not None:
        error = error.__cause__
    return "" if error is None else f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}"


def _relative(path: str, output: Path) -> str:
    """A checkpoint path relative to the output folder (as the tables keep it) when it lies inside it."""
    return str(Path(path).relative_to(output)) if path and Path(path).is_relative_to(output) else path
