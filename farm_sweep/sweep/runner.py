"""Run a study: `python -m farm_sweep.run STUDY.yaml [--output DIR] [--tracking-uri URI] [--optuna-storage URL]
[--address ADDR] [--resume] [--dry-run]`; `python -m farm_sweep.run --print-schema [study|search_space]` prints a
file's JSON Schema.

The study is validated first (exit status 2 on a bad file, nothing written). Then Ray Tune runs the trials
(an embedded local Ray, or `--address auto` for a running cluster), Optuna samples them (OptunaSearch
on a stored Optuna study) and prunes them (farm_sweep.sweep.pruning), MLflow tracks them (farm_sweep.sweep.tracking).
Everything lands in the output folder (default results/<study name>/): trials.csv, the typed tables in tables/
(written as the study runs: farm_sweep.sweep.tables, farm_sweep.sweep.table_recorder), figures, optuna.db (unless
--optuna-storage names a database), mlflow.db + mlartifacts (unless --tracking-uri names a server or a
database), and Ray's storage folder ray/. The stores are checked before anything starts, and their passwords
are never written or printed (farm_sweep.sweep.stores). One run at a time holds the folder
(farm_sweep.sweep.output_lock). Ctrl-C or SIGTERM stops the study (exit status 130 or 143), so does an Optuna
storage that stops answering (exit status 1), and `--resume` continues it; `--resume` trusts only Tune state
whose checksums the study's own run recorded in the folder (farm_sweep.sweep.tune_state), as Tune's state
holds pickles, which run code. A study with a `confirm` section then trains its best configurations again with
fresh seeds and evaluates them on the test split (farm_sweep.sweep.confirmation), tracked in the same MLflow
store; `--resume` continues that stage too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import optuna
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from farm_sweep import figures
from farm_sweep.sweep import (
    cluster,
    confirmation,
    confirmation_table,
    driver_storage,
    experiment,
    interrupts,
    output_lock,
    pareto,
    stores,
    table_recorder,
    tables,
    tracking,
    tune_state,
)
from farm_sweep.sweep.experiment import MODE, RAY_FOLDER, Trainable, trial_name
from farm_sweep.sweep.objectives import tune_modes
from farm_sweep.sweep.pruning import (
    OptunaLink,
    OptunaPruningScheduler,
    PrunedFlag,
    PruningOptunaSearch,
    make_pruner,
)
from farm_sweep.sweep.results_table import METRIC, STATUSES, TABLE_FILE, best_row, write_table
from farm_sweep.sweep.search_space import OPTUNA_TRIAL_KEY, make_sampler, point_text
from farm_sweep.sweep.study import DEFAULT_OBJECTIVES, SCHEMAS, Objective, Study, StudyError, json_schema, load_study
from farm_sweep.sweep.trial import TrialContext, run_trial

OPTUNA_FILE = "optuna.db"
STRICT_METRICS = "TUNE_DISABLE_STRICT_METRIC_CHECKING"  # "1": Tune lets reports lack the searched metrics
OPTUNA_RECORD = "optuna_storage.json"  # the Optuna storage's public URL and study name, for --resume
ENQUEUED_KEY = "fixed_params"  # Optuna's record of an enqueued point's parameters (Study.enqueue_trial)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.print_schema:
        print(json_schema(args.print_schema), end="")
        return 0
    if args.study is None:
        parser.error("the study file is required (or --print-schema)")
    try:
        study = load_study(args.study, runs_here=args.address is None)
        output = (args.output or Path("results") / study.name).resolve()
        if args.dry_run:
            check_output(study, output, args.resume)
            uri, storage = study_stores(output, args.tracking_uri, args.optuna_storage, args.resume)
            print("\n".join(plan(study, output, uri, storage, args.address)))
            return 0
        with output_lock.hold(output):
            check_output(study, output, args.resume)
            uri, storage = study_stores(output, args.tracking_uri, args.optuna_storage, args.resume)
            print("\n".join(plan(study, output, uri, storage, args.address)), flush=True)
            check_stores(study, uri, storage, args.resume)
            cluster.connect(args.address)
            interrupts.catch()  # after Ray's start: its core installs a SIGTERM handler of its own
            began = time.perf_counter()
            rows = run_study(study, output, tracking_uri=uri, optuna_storage=storage, address=args.address,
                             resume=args.resume)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (output_lock.OutputBusy, output_lock.OutputUnusable) as error:
        print(output_lock.refusal(output, error), file=sys.stderr)
        return 2
    except stores.StoreUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except stores.StoreLost as error:
        print(f"error: {error}:\n  python -m farm_sweep.run {study.path} --output {output} --resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the study started: nothing to resume
        print("interrupted before the study started", file=sys.stderr)
        return 128 + signal.SIGINT
    tracker = tracking.load(output)
    confirmed = confirmation.rows(output, study.name)
    print("\n".join(summary(rows, time.perf_counter() - began, output, uri, tracker.ui_path(),
                             len(tracker.unlogged()), confirmed, study.objectives)))
    return _exit_status([*rows, *confirmed], study, output)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m farm_sweep.run", description=__doc__.split("\n\n")[1],
                                     allow_abbrev=False)  # `--address` is looked for before Ray is imported
    parser.add_argument("study", type=Path, nargs="?", help="the study file (studies/*.yaml)")
    parser.add_argument("--output", type=Path, help="results folder (default: results/<study name>)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI: a server (http://HOST:PORT) or a database "
                                               "(postgresql://USER:PASSWORD@HOST:PORT/DB); default: "
                                               "sqlite:///<output>/mlflow.db")
    parser.add_argument("--optuna-storage", help="Optuna storage URL, a database (postgresql://USER:PASSWORD@HOST:"
                                                 "PORT/DB); default: sqlite:///<output>/optuna.db")
    parser.add_argument("--address", help="join a running Ray cluster ('auto' or host:port)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted study in --output; it trusts Tune's state there only if "
                             f"every file matches a checksum the study's own run recorded ({tune_state.RECORD_FILE}),"
                             " as that state holds pickles, which run code when loaded")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved plan and start nothing")
    parser.add_argument("--print-schema", nargs="?", const="study", choices=SCHEMAS,
                        help="print the JSON Schema of a study file (default) or a search-space file, as in "
                             "schemas/, and exit")
    return parser


def check_output(study: Study, output: Path, resume: bool) -> None:
    """The output folder must be new (or empty) for a new study, and hold a restorable one for --resume whose
    Tune state the study's own run recorded."""
    folder = output / RAY_FOLDER / study.name
    if output.exists() and not output.is_dir():
        raise StudyError(output, "--output", "is not a folder; choose a folder for --output")
    if resume:
        if not (tune.Tuner.can_restore(folder) and (output / tracking.STATE_FILE).is_file()):
            raise StudyError(output, "--resume", "no interrupted study to resume here; run without --resume")
        try:
            tune_state.verify(folder, output)
            tune_state.verify(confirmation.folder(output, study.name), output, confirmation.SCOPE)
        except tune_state.UntrustedState as error:
            raise StudyError(output, "--resume", f"{error}; --resume loads only Tune state that the study's own "
                             "run recorded (it holds pickles, which run code when loaded): start the study again "
                             "with a new --output") from None
    elif output.exists() and any(path.name != output_lock.LOCK_FILE for path in output.iterdir()):
        raise StudyError(output, "--output", "already holds a study; pass --resume to continue it, or choose "
                         "another --output")


def study_stores(output: Path, tracking_uri: str | None, optuna_storage: str | None,
                 resume: bool) -> tuple[str, str]:
    """The public URLs of the study's MLflow store and Optuna storage: the options' (default: SQLite files in the
    output folder), or for --resume the ones the study's run recorded, which the options may repeat to give
    their passwords again."""
    if not resume:
        return (stores.remember(tracking_uri) if tracking_uri else tracking.default_uri(output),
                stores.remember(optuna_storage) if optuna_storage else _default_optuna_storage(output))
    recorded = {"--tracking-uri": tracking.load(output).uri, "--optuna-storage": _recorded_optuna_storage(output)}
    for option, given in (("--tracking-uri", tracking_uri), ("--optuna-storage", optuna_storage)):
        if given is not None and stores.public(given) != recorded[option]:
            raise StudyError(output, option, f"{stores.shown(given)} is not the store of the study in this folder "
                             f"({stores.shown(recorded[option])}); leave {option} out, or give that one")
        if given is not None:
            stores.remember(given)
    return recorded["--tracking-uri"], recorded["--optuna-storage"]


def _default_optuna_storage(output: Path) -> str:
    return f"sqlite:///{output / OPTUNA_FILE}"


def _recorded_optuna_storage(output: Path) -> str:
    record = output / OPTUNA_RECORD
    return json.loads(record.read_text())["storage"] if record.is_file() else _default_optuna_storage(output)


def check_stores(study: Study, uri: str, storage: str, resume: bool) -> None:
    """StoreUnavailable, naming the option, unless both stores can be used."""
    checks = (("--tracking-uri", lambda: stores.check_tracking(uri)),
              ("--optuna-storage", lambda: stores.check_optuna(storage, study.name, new=not resume)))
    for option, check in checks:
        try:
            check()
        except stores.StoreUnavailable as error:
            raise stores.StoreUnavailable(f"{option}: {error}") from None


def _exit_status(rows: Sequence[Mapping[str, Any]], study: Study, output: Path) -> int:
    """0, or 128 + the signal that stopped the study (`rows`: its trials and confirmation rows), saying how to
    continue it."""
    signum = interrupts.received()
    if signum is None:
        return 0
    unfinished = sum(row.get("status") == "interrupted" for row in rows)
    print(f"stopped by {signal.Signals(signum).name}: {unfinished} trial(s) unfinished; continue the study with\n"
          f"  python -m farm_sweep.run {study.path} --output {output} --resume", file=sys.stderr)
    if stores.secrets():
        print("  and the stores' passwords, which the study does not keep: the same --tracking-uri and "
              "--optuna-storage again, or PGPASSWORD or ~/.pgpass", file=sys.stderr)
    return 128 + signum


def plan(study: Study, output: Path, uri: str, storage: str, address: str | None) -> list[str]:
    pruner = ", ".join([study.pruner.type, *(f"{k}={v}" for k, v in study.pruner.options.items())])
    sampler = ", ".join([study.sampler.type, f"seed={study.seed}",
                         *(f"{k}={v}" for k, v in study.sampler.options.items())])
    return [f"study {study.name}: {study.trials} trials of up to {study.epochs} epochs, {_objective_text(study)}",
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
             f"  confirm: the {study.confirm.top} best configuration(s) x {study.confirm.seeds} fresh seeds each, "
             "evaluated on the test split" if study.confirm else "  confirm: none",
             f"  ray: {address or 'embedded local Ray'}; storage {output / RAY_FOLDER}",
             f"  optuna: {stores.shown(storage)} (study {study.name!r})",
             f"  mlflow: {stores.shown(uri)}",
             f"  output: {output}"]


def _objective_text(study: Study) -> str:
    """What the search optimises, in words."""
    if not study.several_objectives:
        return f"minimizing validation {METRIC}"
    return "searching the Pareto front of " + ", ".join(f"{o.metric} ({o.direction})" for o in study.objectives)


def _custom_text(custom: Mapping[str, float]) -> str:
    return "".join(f", {amount} {name}" for name, amount in custom.items())


def run_study(study: Study, output: Path, *, tracking_uri: str | None = None, optuna_storage: str | None = None,
              address: str | None = None, resume: bool = False,
              trainable: Trainable = run_trial) -> list[dict[str, Any]]:
    """Run (or resume) the study and its confirmation stage; returns one row per trial of the search (also
    written to <output>/trials.csv; farm_sweep.sweep.confirmation.rows gives the confirmation's). When a signal
    stops it (farm_sweep.sweep.interrupts), unfinished trials are `interrupted` and the MLflow parent run is
    KILLED until --resume finishes them; so it is when the Optuna storage stops answering, and StoreLost says
    so. StudyError when no node of the embedded Ray could run a trial, or when the Optuna storage holds a study of
    this name already."""
    output = output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    uri, storage = study_stores(output, tracking_uri, optuna_storage, resume)
    cluster.connect(address)
    _check_resources(study, address)
    folder = output / RAY_FOLDER / study.name
    if resume and confirmation.planned(output):  # the search had finished: only its confirmation is left
        tracker = tracking.reopen(output)
        rows = trial_rows(folder, tracker, output)
    else:
        tracker, rows = _search(study, output, uri, storage, resume, trainable)
        if any(row["status"] == "interrupted" for row in rows):
            return rows
    if confirmation.follows(study, output, rows):
        confirmation.run(study, output, tracker, rows, resume=resume)
    elif study.confirm:
        print("confirmation: none, as no trial of the search completed", flush=True)
    return rows


def _search(study: Study, output: Path, uri: str, storage: str, resume: bool,
            trainable: Trainable) -> tuple[tracking.Tracker, list[dict[str, Any]]]:
    """Run (or resume) the search: its tracker and its rows, written to trials.csv and logged (the parent run
    stays open when a confirmation follows)."""
    link = OptunaLink(storage, study.name, make_pruner(study.pruner.type, study.pruner.options, study.epochs))
    link.open_fresh()  # what an earlier run in this process read of the study is forgotten
    folder = output / RAY_FOLDER / study.name
    if resume:
        experiment.quiet_deleted_checkpoints()
        tracker = tracking.reopen(output)
        _fail_orphans(link, {trial.config.get(OPTUNA_TRIAL_KEY) for trial in tune.ExperimentAnalysis(
            str(folder)).trials}, enqueue_again=True)
        tuner = tune.Tuner.restore(str(folder), trainable=_trainable(study, tracker, trainable))
    else:
        _create_optuna_study(study, link)
        (output / OPTUNA_RECORD).write_text(json.dumps({"storage": storage, "study": study.name}))
        tracker = tracking.start(study.name, output, uri, _settings(study, storage),
                                 [p for p in (study.path, study.search_space_path) if p and p.is_file()],
                                 study_note(study))
        tuner = _new_tuner(study, output, link, tracker, trainable)
    tune_state.record(folder, output)
    try:
        with _lenient_metrics(study.several_objectives):
            tuner.fit()
        link.flush()
    except Exception as error:
        reason = stores.database_failure(error)
        if reason is None:
            raise
        _stop_without_storage(study, folder, output, tracker, link, reason)
    tune_state.record(folder, output)
    rows = trial_rows(folder, tracker, output)
    _fail_orphans(link, {row["optuna_trial"] for row in rows if row["status"] == "interrupted"})
    tracker.end_unrecorded({row["trial_id"] for row in rows})
    if study.several_objectives:
        rows = pareto.mark(rows, link.study)
    if any(row["status"] == "interrupted" for row in rows):
        _interrupt(study, output, tracker, rows)
    else:
        _finish(study, output, link, tracker, rows, end=not confirmation.follows(study, output, rows))
    return tracker, rows


@contextlib.contextmanager
def _lenient_metrics(lenient: bool) -> Iterator[None]:
    """While the search runs, with `lenient`: Tune accepts reports that lack the searched metrics. An evaluation
    objective arrives with a trial's last epoch only; a trial that ends without it fails in Optuna
    (PruningOptunaSearch). Restored after, so the next study in this process is checked strictly."""
    before = os.environ.get(STRICT_METRICS)
    if lenient:
        os.environ[STRICT_METRICS] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(STRICT_METRICS, None)
        else:
            os.environ[STRICT_METRICS] = before


def _check_resources(study: Study, address: str | None) -> None:
    """StudyError when no node of the embedded Ray could run a trial; a warning with --address, where an
    autoscaler may still add a node that can (docs/cluster.md's cluster starts without workers)."""
    try:
        cluster.check_resources(study.resources.cpus, study.resources.gpus, study.resources.custom)
    except cluster.ResourcesUnavailable as error:
        if address is None:
            raise StudyError(study.path, error.field, error.reason) from None
        print(f"warning: {study.path}: {error.field}: {error.reason}; until an autoscaler adds a node that can, "
              "the trials wait", file=sys.stderr, flush=True)


def _create_optuna_study(study: Study, link: OptunaLink) -> None:
    """The study's Optuna study, new: StudyError if the storage has one of that name (a second driver of a
    study of the same name started at the same time: sharing it, the two would mix their trials)."""
    try:
        optuna.create_study(study_name=study.name, storage=stores.optuna_storage(link.storage_url),
                            directions=[objective.direction for objective in study.objectives])
    except optuna.exceptions.DuplicatedStudyError:
        raise StudyError(study.path, "name", f"the Optuna storage {stores.shown(link.storage_url)} already holds a "
                         f"study named {study.name!r}; rename the study, or continue that one with --resume "
                         "on its --output folder") from None


def _trainable(study: Study, tracker: tracking.Tracker, trainable: Trainable) -> Any:
    return experiment.trainable(trainable, TrialContext(dict(study.space.fixed), tracker, dict(study.evaluation)),
                                study)


def _new_tuner(study: Study, output: Path, link: OptunaLink, tracker: tracking.Tracker,
               trainable: Trainable) -> tune.Tuner:
    enqueued = [study.space.as_optuna_point(point) for point in study.enqueue]
    searcher = PruningOptunaSearch(
        space=study.space, **_search_objectives(study), points_to_evaluate=enqueued or None,
        sampler=make_sampler(study.sampler.type, study.sampler.options, study.space, study.seed),
        study_name=study.name, storage=driver_storage.shared(link.storage_url))  # the link's: one view of the study
    return tune.Tuner(
        _trainable(study, tracker, trainable),
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=searcher,
                                    scheduler=_scheduler(study, link), num_samples=study.trials,
                                    max_concurrent_trials=study.max_concurrent_trials, reuse_actors=True,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=experiment.run_config(study, output, study.name, tracker, first=[
            PrunedFlag(link), table_recorder.TableRecorder(output, output / RAY_FOLDER / study.name, study.name)]))


def _search_objectives(study: Study) -> dict[str, Any]:
    """The searcher's metric and mode: Tune's one (validation nll_image, min), or a list of each for several
    objectives."""
    if not study.several_objectives:
        return {"metric": METRIC, "mode": MODE}
    return {"metric": [objective.metric for objective in study.objectives],
            "mode": tune_modes([objective.direction for objective in study.objectives])}


def _scheduler(study: Study, link: OptunaLink) -> TrialScheduler:
    """The Optuna pruning scheduler; for several objectives, which Optuna neither prunes nor takes intermediate
    values of, Tune's plain first-in-first-out one."""
    return FIFOScheduler() if study.several_objectives else OptunaPruningScheduler(link, METRIC)


def study_note(study: Study) -> str:
    """The parent run's description (Markdown): what the study searched, and how."""
    return "\n".join([
        f"**Study {study.name}**: {study.trials} trials of up to {study.epochs} epochs, {_objective_text(study)}"
        f"{'' if study.several_objectives else ' (nats per image)'}. {study.description}".rstrip(), "",
        "Searched:", "", *(f"- {line}" for line in study.space.describe()), "",
        f"Fixed: `{json.dumps(study.space.fixed)}`", "",
        f"Sampler {study.sampler.type}, pruner {study.pruner.type}; each child run is one trial, named by its "
        "sampled parameters.",
        *([f"\nConfirmation: the best {study.confirm.top} configuration(s) trained again with "
           f"{study.confirm.seeds} fresh seeds each and evaluated on the test split, in the nested run "
           f"`{confirmation.STAGE}`."] if study.confirm else [])])


def _settings(study: Study, storage: str) -> dict[str, Any]:
    """The study's settings as parent-run parameters (the Optuna storage's URL without its password)."""
    return {"trials": study.trials, "optuna_storage": storage, "seed": study.seed, "sampler": study.sampler.type,
            "sampler_options": study.sampler.options, "pruner": study.pruner.type,
            "pruner_options": study.pruner.options, "search_space": study.space.describe(),
            "enqueue": list(study.enqueue), "cpus_per_trial": study.resources.cpus,
            "confirm": study.confirm and {"top": study.confirm.top, "seeds": study.confirm.seeds},
            "gpus_per_trial": study.resources.gpus, "max_failures": study.max_failures,
            **({"objectives": [o.model_dump() for o in study.objectives]} if study.several_objectives else {}),
            **{f"fixed.{name}": value for name, value in study.space.fixed.items()}}


def trial_rows(folder: Path, tracker: tracking.Tracker, output: Path) -> list[dict[str, Any]]:
    """One flat row per trial: ids, status, epochs, last metrics, parameters, checkpoint, MLflow run.

    Read from the experiment state Tune saved last: it keeps the trials a signal stopped unfinished (in
    memory Tune marks them terminated as it cleans up), and the configuration of a trial that never started."""
    analysis = tune.ExperimentAnalysis(str(folder))
    rows = [{"trial_id": trial.trial_id, "optuna_trial": trial.config.get(OPTUNA_TRIAL_KEY),
             **experiment.outcome(trial, result, tracker, output),
             **{f"param.{k}": v for k, v in trial.config.items() if k != OPTUNA_TRIAL_KEY},
             **experiment.evaluation_metrics(trial)}
            for trial, result in zip(analysis.trials, tune.ResultGrid(analysis))]
    return sorted(rows, key=lambda row: (row["optuna_trial"] is None, row["optuna_trial"] or 0))


def _finish(study: Study, output: Path, link: OptunaLink, tracker: tracking.Tracker, rows: list[dict[str, Any]],
            end: bool) -> None:
    """trials.csv, the tables and the study figures in the output folder, all logged on the parent run (which
    ends, unless a confirmation follows: `end`)."""
    table = write_table(rows, output / TABLE_FILE)
    written = _write_tables(study, output, rows)
    files = [table, *written]
    trials, epochs, evaluation = (tables.read(path).to_pylist() for path in written)  # the figures' one source
    if epochs:
        statuses = {trial["trial_id"]: trial["status"] for trial in trials}
        files.append(figures.learning_curves_figure(epochs, statuses, output / "learning_curves.png"))
    points = figures.speed_quality_points(evaluation)
    if points:
        files.append(figures.pareto_figure(points, output / "speed_quality_pareto.png"))
    files += figures.parameter_figures(study.space.scales(), rows, [], output)
    importances = _importances(link.study)
    if importances:
        files.append(figures.importance_figure(importances, output / "param_importance.png"))
    counts = Counter(row["status"] for row in rows)
    if study.several_objectives:
        files += pareto.write_front(rows, study.objectives, output)
        front = pareto.front_rows(rows, study.objectives)
        tracker.finish_study(None, files, {s: counts.get(s, 0) for s in STATUSES}, study_note(study), end=end,
                             front=[{key: row[key] for key in ("trial_id", "mlflow_run_id")} for row in front])
    else:
        best = best_row(rows)
        tracker.finish_study(best and {k: v for k, v in best.items() if v is not None and v != ""},
                             files, {s: counts.get(s, 0) for s in STATUSES}, study_note(study), end=end)
    tracker.replay()


def _interrupt(study: Study, output: Path, tracker: tracking.Tracker, rows: list[dict[str, Any]]) -> None:
    """trials.csv and the tables as they stand; the MLflow runs of unfinished trials and the parent run KILLED."""
    files = [write_table(rows, output / TABLE_FILE), *_write_tables(study, output, rows)]
    for row in rows:
        if row["status"] == "interrupted" and row["mlflow_run_id"]:
            tracker.end_trial(row["mlflow_run_id"], "interrupted")
    tracker.interrupt_study(files)
    tracker.replay()


def _write_tables(study: Study, output: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """trials.parquet, epochs.parquet, evaluation.parquet in <output>/tables/."""
    return table_recorder.write_tables(output, output / RAY_FOLDER / study.name, study.name, rows)


def _stop_without_storage(study: Study, folder: Path, output: Path, tracker: tracking.Tracker, link: OptunaLink,
                          reason: str) -> NoReturn:
    """The Optuna storage went away (the driver's sampler and pruners cannot go on without it): stop the study as a
    signal would, and raise StoreLost, for --resume to continue it once the storage is back."""
    tune_state.record(folder, output)
    _interrupt(study, output, tracker, trial_rows(folder, tracker, output))
    raise stores.StoreLost(f"--optuna-storage: {stores.shown(link.storage_url)} stopped answering mid-study "
                           f"({reason}); the study stopped, its unfinished trials interrupted: start the database "
                           "again, then continue the study with --resume")


def _fail_orphans(link: OptunaLink, owned: set[int], enqueue_again: bool = False) -> None:
    """FAIL the Optuna trials left RUNNING that no Tune trial will tell (`owned`: the Optuna trial numbers of
    those that will): the searcher asked for them just before a driver was killed, before Tune recorded their
    trial. On --resume (`enqueue_again`), an orphan that was an enqueued point is enqueued again, so that the
    study still runs that point (a sampled one is simply sampled anew)."""
    for trial in link.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.number not in owned:
            link.study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            if enqueue_again and ENQUEUED_KEY in trial.system_attrs:
                link.study.enqueue_trial(trial.system_attrs[ENQUEUED_KEY])


def _importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's parameter importances over the completed trials (empty when there are too few to tell)."""
    try:
        with warnings.catch_warnings():  # Optuna warns when few trials per regime; the figure still helps
            warnings.simplefilter("ignore", UserWarning)
            return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        return {}


def summary(rows: Sequence[Mapping[str, Any]], seconds: float, output: Path, uri: str, ui_path: str,
            unlogged: int = 0, confirmed: Sequence[Mapping[str, Any]] = (),
            objectives: Sequence[Objective] = DEFAULT_OBJECTIVES) -> list[str]:
    """The search's trials, its best (several objectives: its Pareto front), then the confirmation's
    configurations (`confirmed`: its rows), and where to look: the results and the MLflow UI (its page of the
    study's runs)."""
    counts = Counter(row["status"] for row in rows)
    lines = [f"{'trial':<14}{'optuna':>7}  {'status':<11}{'epochs':>7}  {METRIC:>10}  parameters"]
    for row in rows:
        value = "-" if row[METRIC] is None else f"{float(row[METRIC]):.3f}"
        params = {k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.")}
        lines.append(f"{row['trial_id']:<14}{row['optuna_trial']!s:>7}  {row['status']:<11}{row['epochs']!s:>7}  "
                     f"{value:>10}  {point_text(params)}")
    best = best_row(rows)
    lines += [f"{len(rows)} trials in {seconds:.0f}s: "
              + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES),
              *(_front_lines(rows, objectives) if len(objectives) > 1 else
                [f"best: {best['trial_id']} {METRIC} {float(best[METRIC]):.3f}" if best else "best: none completed"]),
              *confirmation_table.summary(confirmed),
              f"results: {output}",
              *([f"tracking: {unlogged} calls could not be logged to {stores.shown(uri)}; they are kept in "
                 f"{output / tracking.JOURNAL_FILE}"] if unlogged else []),
              f"MLflow UI: {stores.shown(uri).rstrip('/')}/{ui_path}" if uri.startswith(("http://", "https://")) else
              f"MLflow UI: mlflow ui --backend-store-uri {stores.shown(uri)}, then open http://127.0.0.1:5000/{ui_path}"]
    return lines


def _front_lines(rows: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]) -> list[str]:
    """The Pareto front's trials, best first by the first objective, with every objective's value."""
    front = pareto.front_rows(rows, objectives)
    if not front:
        return ["Pareto front: none completed"]
    return [f"Pareto front: {len(front)} trial(s), by {objectives[0].metric} ({pareto.FRONT_TABLE}):",
            *(f"  {row['trial_id']}  " + "  ".join(f"{o.metric} {float(row[o.metric]):.4g}" for o in objectives)
              for row in front)]
