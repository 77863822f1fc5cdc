"""One trial of a study, as a Ray Tune function trainable.

`run_trial(config, context)`: config holds the parameters Optuna sampled (plus the Optuna trial number),
context the study's fixed parameters, evaluation settings and MLflow tracker. The trial builds its
TrainConfig, resumes from Tune's checkpoint when Tune restarts it (retry after a failure, or --resume),
tags its MLflow child run with where it trains (`device_tags`), trains one epoch at a time, logs each epoch
to that run (step = epoch) and reports the epoch's metrics with the epoch's checkpoint to Tune. After the last
epoch a study with an `evaluation` section runs the end-of-trial evaluation and logs its metrics and
artifacts; a trial of the confirmation stage (farm_sweep.sweep.confirmation, `TrialContext.on_test`) is
evaluated on the test split instead.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
import torch
from ray import tune

from farm_sweep.data import DatasetSpec, spec_sha256
from farm_sweep.sweep import stores
from farm_sweep.sweep.reports import EPOCH_METRIC_KEY, FINAL_STEP_KEY
from farm_sweep.sweep.search_space import OPTUNA_TRIAL_KEY, point_text
from farm_sweep.sweep.tracking import MAX_RUN_NAME, Tracker
from farm_sweep.training import checkpoint
from farm_sweep.training.config import ConfigError, TrainConfig
from farm_sweep.training.device import choose_device, visible_devices
from farm_sweep.training.loop import NonFiniteLossError, load_model, train

RESTORED = "restored"
EVALUATION = "evaluation"
CUDA_TAG, DEVICE_TAG, DEVICE_REASON_TAG = "farm.cuda_visible_devices", "farm.device", "farm.device_reason"
THREADS_TAG = "farm.torch_threads"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a study shares (passed with tune.with_parameters)."""

    fixed: dict[str, Any]
    tracker: Tracker
    evaluation: dict[str, Any] = field(default_factory=dict)
    on_test: bool = False  # evaluate the final model on the test split (the confirmation stage)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)  # the stores' passwords (stores.secrets)


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """The Tune trainable of a search: train, log and report every epoch; evaluate after the last one."""
    params = {name: value for name, value in config.items() if name != OPTUNA_TRIAL_KEY}
    trial_id = tune.get_context().get_trial_id()
    run_tracked(TrainConfig.from_dict({**context.fixed, **params}), context, run_name(params, trial_id),
                {"farm.optuna_trial": config[OPTUNA_TRIAL_KEY], "farm.sampled": ",".join(sorted(params))})


def run_tracked(train_config: TrainConfig, context: TrialContext, name: str, tags: dict[str, Any]) -> None:
    """Train `train_config` as the current Tune trial, logging to its MLflow child run (named `name`, tagged
    `tags`)."""
    stores.learn(context.secrets)
    threads = use_granted_cpus()
    trial_dir = Path(tune.get_context().get_trial_dir())
    run_id = context.tracker.child_run(tune.get_context().get_trial_id(), name, _params(train_config),
                                       tags={**tags, **device_tags(train_config.device), THREADS_TAG: threads})
    try:
        _train_and_report(train_config, trial_dir, context, run_id)
    except NonFiniteLossError as error:  # a retry resumes before the divergence and diverges again: one epoch
        context.tracker.end_trial(run_id, "failed", reason=f"NonFiniteLossError: {error}")
        raise


def use_granted_cpus() -> int:
    """Run torch on as many threads as the CPUs Ray granted the trial (`resources.cpus`, at least one), whatever
    OMP_NUM_THREADS the driver was started with, so that the study file alone says how a trial uses its cores
    (BENCHMARKS.md: 2 trials x 1 thread against 1 trial x 2 threads). Returns the thread count."""
    granted = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    threads = max(1, int(granted))
    torch.set_num_threads(threads)
    return threads


def device_tags(requested: str) -> dict[str, str]:
    """Where the trial trains, as tags of its run: the CUDA_VISIBLE_DEVICES it was given (Ray sets it for a trial
    with `resources.gpus`), the device, and why `device: auto` fell back to the CPU."""
    tags = {CUDA_TAG: visible_devices()}
    try:
        choice = choose_device(requested)
    except ConfigError:  # device: cuda on a node without CUDA: training fails the trial with this message
        return tags
    return {**tags, DEVICE_TAG: str(choice.device),
            **({DEVICE_REASON_TAG: choice.fallback_reason} if choice.fallback_reason else {})}


def run_name(params: dict[str, Any], label: str) -> str:
    """A child run's name: the trial's parameters, then `label` (its id; MLflow keeps MAX_RUN_NAME characters)."""
    suffix = f" ({label})"
    text, room = point_text(params), MAX_RUN_NAME - len(suffix)
    return (text if len(text) <= room else text[:room - 3] + "...") + suffix


def _params(train_config: TrainConfig) -> dict[str, Any]:
    """The trial's MLflow parameters: its configuration, and the sha256 of a dataset spec's file as the trial
    finds it (so the run says exactly which data it saw, whether or not the spec pins a checksum)."""
    params = train_config.to_dict()
    if isinstance(train_config.dataset, DatasetSpec):
        params["dataset_sha256"] = spec_sha256(train_config.dataset)
    return params


def _train_and_report(train_config: TrainConfig, trial_dir: Path, context: TrialContext, run_id: str) -> None:
    logged = context.tracker.last_step(run_id, "nll_image")
    # Checkpoints are written to node-local scratch: Tune persists the reported ones, and the trial folder is
    # synced to storage in the background, which must not meet a checkpoint half-renamed.
    with tempfile.TemporaryDirectory(prefix="farm-trial-") as scratch:
        _report_epochs(train(train_config, Path(scratch), _restored_checkpoint(trial_dir), progress=None),
                       train_config, trial_dir, context, run_id, logged)


def _report_epochs(epochs: Iterator[dict[str, Any]], train_config: TrainConfig, trial_dir: Path,
                   context: TrialContext, run_id: str, logged: int) -> None:
    """Log and report every epoch. The last one (`final`: the planned last epoch or an early stop) is
    evaluated, and with early stopping it reports the best epoch's validation value, which is what its
    checkpoint holds: Optuna's value, trials.csv and exports all see the best epoch (the epoch's own value goes
    along under EPOCH_METRIC_KEY, for the study's epochs table)."""
    for metrics in epochs:
        epoch, final = metrics["epoch"], metrics.get("final", False)
        if final and (context.evaluation or context.on_test):
            metrics |= _evaluate(Path(metrics["checkpoint"]), train_config, trial_dir / EVALUATION, context, run_id)
        numbers = {key: value for key, value in metrics.items() if key != "checkpoint"}
        if epoch > logged:
            context.tracker.log_metrics(run_id, numbers, step=epoch)
        report = {**numbers, FINAL_STEP_KEY: epoch if final else train_config.epochs}
        if final and "best_epoch" in metrics:
            report |= {"nll_image": metrics["best_nll_image"], EPOCH_METRIC_KEY: metrics["nll_image"]}
            context.tracker.set_tags(run_id, {"farm.stopped_early": metrics["stopped_early"],
                                              "farm.best_epoch": metrics["best_epoch"]})
        tune.report(report, checkpoint=tune.Checkpoint.from_directory(metrics["checkpoint"]))


def _restored_checkpoint(trial_dir: Path) -> Path | None:
    """Tune's latest checkpoint for this trial, copied into the trial folder; None for a fresh start.

    A latest checkpoint that fails its checksums falls back, with a warning, to the newest older one Tune
    kept (on storage that is a shared file system: NFS, or one machine)."""
    latest = tune.get_checkpoint()
    if latest is None:
        return None
    target = trial_dir / RESTORED
    with latest.as_directory() as folder:
        for candidate in (Path(folder), *_older_checkpoints(latest)):
            try:
                checkpoint.verify(candidate)
            except checkpoint.CheckpointError as error:
                log.warning("trial checkpoint rejected, trying an older one: %s", error)
                continue
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(candidate, target)
            return target
    raise checkpoint.CheckpointError(f"{trial_dir}: no checkpoint of this trial passes its checksums")


def _older_checkpoints(latest: tune.Checkpoint) -> list[Path]:
    if not isinstance(latest.filesystem, pyarrow.fs.LocalFileSystem):
        return []
    newest = Path(latest.path)
    return sorted((p for p in newest.parent.glob("checkpoint_*") if p.name < newest.name), reverse=True)


def _evaluate(checkpoint: Path, train_config: TrainConfig, out_dir: Path, context: TrialContext,
              run_id: str) -> dict[str, float]:
    """The end-of-trial evaluation (inpainting, speed-quality curve; on the test split for the confirmation
    stage); artifacts go to the child run."""
    from farm_sweep.evaluation import end_of_trial  # heavy: only when a study asks for it

    model, config = load_model(checkpoint, str(choose_device(train_config.device).device))  # training logged why
    evaluate = end_of_trial.evaluate_on_test if context.on_test else end_of_trial.evaluate_trained_model
    metrics, files = evaluate(model, config, out_dir, context.evaluation)
    context.tracker.log_files(run_id, files, EVALUATION)
    return metrics
