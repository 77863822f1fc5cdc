"""Run a study: `python -m farm_sweep.run STUDY.yaml [--output DIR] [--tracking-uri URI] [--address ADDR]
[--resume] [--dry-run]`.

The study is validated first (exit status 2 on a bad file, nothing written). Then Ray Tune runs the trials
(an embedded local Ray, or `--address auto` for a running cluster), Optuna samples them (OptunaSearch
on a stored Optuna study) and prunes them (farm_sweep.sweep.pruning), MLflow tracks them (farm_sweep.sweep.tracking).
Everything lands in the output folder (default results/<study name>/): trials.csv, figures, optuna.db,
mlflow.db + mlartifacts (unless --tracking-uri names a server), and Ray's storage folder ray/.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.callback import Callback
from ray.tune.experiment import Trial

from farm_sweep import figures
from farm_sweep.sweep import tracking
from farm_sweep.sweep.pruning import (
    OptunaLink,
    OptunaPruningScheduler,
    PrunedFlag,
    PruningOptunaSearch,
    make_pruner,
)
from farm_sweep.sweep.reports import FINAL_STEP_KEY, PRUNED_KEY
from farm_sweep.sweep.results_table import METRIC, STATUSES, TABLE_FILE, best_row, write_table
from farm_sweep.sweep.search_space import OPTUNA_TRIAL_KEY, make_sampler
from farm_sweep.sweep.study import Study, StudyError, load_study
from farm_sweep.sweep.trial import TrialContext, run_trial

MODE = "min"
RAY_FOLDER, OPTUNA_FILE = "ray", "optuna.db"

Trainable = Callable[[dict[str, Any], TrialContext], None]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        study = load_study(args.study, runs_here=args.address is None)
        output = check_output(study, args.output or Path("results") / study.name, args.resume)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    uri = args.tracking_uri or tracking.default_uri(output)
    print("\n".join(plan(study, output, uri, args.address)))
    if args.dry_run:
        return 0
    try:
        tracking.check_reachable(uri)
    except tracking.TrackingUnavailable as error:
        print(f"error: --tracking-uri: {error}", file=sys.stderr)
        return 2
    began = time.perf_counter()
    rows = run_study(study, output, tracking_uri=uri, address=args.address, resume=args.resume)
    unlogged = tracking.load(output).unlogged()
    print("\n".join(summary(rows, time.perf_counter() - began, output, uri, len(unlogged))))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m farm_sweep.run", description=__doc__.split("\n\n")[1])
    parser.add_argument("study", type=Path, help="the study file (studies/*.yaml)")
    parser.add_argument("--output", type=Path, help="results folder (default: results/<study name>)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<output>/mlflow.db)")
    parser.add_argument("--address", help="join a running Ray cluster ('auto' or host:port)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted study in --output")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved plan and start nothing")
    return parser


def check_output(study: Study, output: Path, resume: bool) -> Path:
    """The output folder must be new (or empty) for a new study and hold a restorable one for --resume."""
    output = output.resolve()
    if resume and not (tune.Tuner.can_restore(output / RAY_FOLDER / study.name)
                       and (output / tracking.STATE_FILE).is_file()):
        raise StudyError(output, "--resume", "no interrupted study to resume here; run without --resume")
    if not resume and output.exists() and any(output.iterdir()):
        raise StudyError(output, "--output", "already holds a study; pass --resume to continue it, or choose "
                         "another --output")
    return output


def plan(study: Study, output: Path, uri: str, address: str | None) -> list[str]:
    pruner = ", ".join([study.pruner.type, *(f"{k}={v}" for k, v in study.pruner.options.items())])
    sampler = ", ".join([study.sampler.type, f"seed={study.seed}",
                         *(f"{k}={v}" for k, v in study.sampler.options.items())])
    return [f"study {study.name}: {study.trials} trials of up to {study.epochs} epochs, minimizing validation "
             f"{METRIC}",
             f"  search space ({study.search_space_path or 'inline'}):",
             *(f"    {line}" for line in study.space.describe()),
             f"  fixed: {json.dumps(study.space.fixed)}",
             f"  enqueued first: {json.dumps(list(study.enqueue))}" if study.enqueue else "  enqueued first: none",
             f"  sampler: {sampler}",
             f"  pruner: {pruner} (step = epoch)",
             f"  resources per trial: {study.resources.cpus} CPU, {study.resources.gpus} GPU (GPU only when the "
             f"cluster has one){_custom_text(study.resources.custom)}; "
             f"max concurrent: {study.max_concurrent_trials or 'as resources allow'}; "
             f"max_failures: {study.max_failures}",
             f"  evaluation: {json.dumps(study.evaluation) if study.evaluation else 'none'}",
             f"  ray: {address or 'embedded local Ray'}; storage {output / RAY_FOLDER}",
             f"  optuna: sqlite:///{output / OPTUNA_FILE} (study {study.name!r})",
             f"  mlflow: {uri}",
             f"  output: {output}"]


def _custom_text(custom: Mapping[str, float]) -> str:
    return "".join(f", {amount} {name}" for name, amount in custom.items())


def run_study(study: Study, output: Path, *, tracking_uri: str | None = None, address: str | None = None,
              resume: bool = False, trainable: Trainable = run_trial) -> list[dict[str, Any]]:
    """Run (or resume) the study; returns one row per trial (also written to <output>/trials.csv)."""
    output = output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    _connect(address)
    uri = tracking_uri or tracking.default_uri(output)
    link = OptunaLink(f"sqlite:///{output / OPTUNA_FILE}", study.name,
                      make_pruner(study.pruner.type, study.pruner.options, study.epochs))
    if resume:
        tracker = tracking.reopen(output)
        tuner = tune.Tuner.restore(str(output / RAY_FOLDER / study.name),
                                   trainable=_trainable(study, tracker, trainable))
    else:
        tracker = tracking.start(study.name, output, uri, _settings(study),
                                 [p for p in (study.path, study.search_space_path) if p and p.is_file()])
        tuner = _new_tuner(study, output, link, tracker, trainable)
    rows = trial_rows(tuner.fit(), tracker, output)
    _finish(study, output, link, tracker, rows)
    return rows


def _connect(address: str | None) -> None:
    # --resume restarts from Tune's last experiment snapshot: take one every second (default: every 10s or
    # more), so a killed driver loses at most a second of trial bookkeeping; and do not warn about it.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)


def _trainable(study: Study, tracker: tracking.Tracker, trainable: Trainable) -> Any:
    context = TrialContext(dict(study.space.fixed), tracker, dict(study.evaluation))
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    resources = {"cpu": study.resources.cpus, "gpu": study.resources.gpus if has_gpu else 0,
                 **study.resources.custom}
    return tune.with_resources(tune.with_parameters(trainable, context=context), resources)


def _new_tuner(study: Study, output: Path, link: OptunaLink, tracker: tracking.Tracker,
               trainable: Trainable) -> tune.Tuner:
    storage = optuna.storages.RDBStorage(link.storage_url)
    optuna.create_study(study_name=study.name, storage=storage, direction="minimize", load_if_exists=True)
    searcher = PruningOptunaSearch(
        space=study.space, metric=METRIC, mode=MODE, points_to_evaluate=[dict(p) for p in study.enqueue] or None,
        sampler=make_sampler(study.sampler.type, study.sampler.options, study.space, study.seed),
        study_name=study.name, storage=storage)
    return tune.Tuner(
        _trainable(study, tracker, trainable),
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=searcher,
                                    scheduler=OptunaPruningScheduler(link, METRIC), num_samples=study.trials,
                                    max_concurrent_trials=study.max_concurrent_trials,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(
            name=study.name, storage_path=str(output / RAY_FOLDER), verbose=0,
            failure_config=tune.FailureConfig(max_failures=study.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[PrunedFlag(link), tracking.TrackingCallback(tracker), ProgressPrinter()]))


def trial_name(trial: Trial) -> str:
    """`trial_<id>`: the Ray trial folder and the MLflow child run name."""
    return f"trial_{trial.trial_id}"


def _settings(study: Study) -> dict[str, Any]:
    """The study's settings as parent-run parameters."""
    return {"trials": study.trials, "seed": study.seed, "sampler": study.sampler.type,
            "sampler_options": study.sampler.options, "pruner": study.pruner.type,
            "pruner_options": study.pruner.options, "search_space": study.space.describe(),
            "enqueue": list(study.enqueue), "cpus_per_trial": study.resources.cpus,
            "gpus_per_trial": study.resources.gpus, "max_failures": study.max_failures,
            **{f"fixed.{name}": value for name, value in study.space.fixed.items()}}


class ProgressPrinter(Callback):
    """One line per trial result and per trial end, printed by the driver."""

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        status = "pruned" if result.get(PRUNED_KEY) else "running"
        print(f"{trial.trial_id} {_params_text(trial.config)} epoch {result['epoch']}/{result[FINAL_STEP_KEY]} "
              f"{METRIC} {result[METRIC]:.3f} {status}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        status = "pruned" if trial.last_result.get(PRUNED_KEY) else "completed"
        print(f"{trial.trial_id} {status} after epoch {trial.last_result.get('epoch')}", flush=True)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        print(f"{trial.trial_id} failed (error: {trial.error_file})", flush=True)


def _params_text(config: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in config.items() if k != OPTUNA_TRIAL_KEY)


def trial_rows(grid: tune.ResultGrid, tracker: tracking.Tracker, output: Path) -> list[dict[str, Any]]:
    """One flat row per trial: ids, status, epochs, last metrics, parameters, checkpoint, MLflow run."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        checkpoint = result.checkpoint.path if result.checkpoint else ""
        rows.append({
            "trial_id": trial_id, "optuna_trial": result.config.get(OPTUNA_TRIAL_KEY),
            "status": _status(result.error, metrics), "epochs": metrics.get("epoch", 0),
            "failure_reason": _reason(result.error),
            METRIC: metrics.get(METRIC), "train_loss": metrics.get("train_loss"),
            **{key: metrics[key] for key in ("best_epoch", "stopped_early") if key in metrics},
            "mlflow_run_id": tracker.run_of(trial_id), "checkpoint": _relative(checkpoint, output),
            **{f"param.{k}": v for k, v in result.config.items() if k != OPTUNA_TRIAL_KEY},
            **{k: v for k, v in metrics.items() if k.startswith(("inpaint/", "sampling/"))}})
    return sorted(rows, key=lambda row: (row["optuna_trial"] is None, row["optuna_trial"] or 0))


def _reason(error: Exception | None) -> str:
    """The root cause of a failed trial, in one line (Ray wraps it in its own error types)."""
    while error is not None and error.__cause__ is not None:
        error = error.__cause__
    return "" if error is None else f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}"


def _status(error: Exception | None, metrics: Mapping[str, Any]) -> str:
    if error is not None:
        return "failed"
    if metrics.get(PRUNED_KEY):
        return "pruned"
    return "completed" if metrics and metrics.get("epoch") == metrics.get(FINAL_STEP_KEY) else "incomplete"


def _relative(path: str, output: Path) -> str:
    return str(Path(path).relative_to(output)) if path and Path(path).is_relative_to(output) else path


def _finish(study: Study, output: Path, link: OptunaLink, tracker: tracking.Tracker,
            rows: list[dict[str, Any]]) -> None:
    """trials.csv and the study figures in the output folder, all logged on the parent run."""
    files = [write_table(rows, output / TABLE_FILE)]
    points = figures.speed_quality_points(rows)
    if points:
        files.append(figures.pareto_figure(points, output / "speed_quality_pareto.png"))
    importances = _importances(link.study)
    if importances:
        files.append(figures.importance_figure(importances, output / "param_importance.png"))
    counts = Counter(row["status"] for row in rows)
    best = best_row(rows)
    tracker.finish_study(best and {k: v for k, v in best.items() if v is not None and v != ""},
                         files, {s: counts.get(s, 0) for s in STATUSES})
    tracker.replay()


def _importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's parameter importances over the completed trials (empty when there are too few to tell)."""
    try:
        with warnings.catch_warnings():  # Optuna warns when few trials per regime; the figure still helps
            warnings.simplefilter("ignore", UserWarning)
            return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        return {}


def summary(rows: Sequence[Mapping[str, Any]], seconds: float, output: Path, uri: str,
            unlogged: int = 0) -> list[str]:
    counts = Counter(row["status"] for row in rows)
    lines = [f"{'trial':<14}{'optuna':>7}  {'status':<11}{'epochs':>7}  {METRIC:>10}  parameters"]
    for row in rows:
        value = "-" if row[METRIC] is None else f"{float(row[METRIC]):.3f}"
        params = {k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.")}
        lines.append(f"{row['trial_id']:<14}{row['optuna_trial']!s:>7}  {row['status']:<11}{row['epochs']!s:>7}  "
                     f"{value:>10}  {_params_text(params)}")
    best = best_row(rows)
    lines += [f"{len(rows)} trials in {seconds:.0f}s: "
              + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES),
              f"best: {best['trial_id']} {METRIC} {float(best[METRIC]):.3f}" if best else "best: none completed",
              f"results: {output}",
              *([f"tracking: {unlogged} calls could not be logged to {uri}; they are kept in "
                 f"{output / tracking.JOURNAL_FILE}"] if unlogged else []),
              f"MLflow UI: mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite") else f"MLflow: {uri}"]
    return lines

