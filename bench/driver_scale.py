"""The driver at scale, by simulation: synthetic trial results, no training, fed to what a study's driver runs
for every result, with the SQLite stores a study uses by default (optuna.db, mlflow.db).

The simulated driver is built as the runner builds it (farm_sweep/sweep/runner.py): the searcher
(`PruningOptunaSearch`, TPE) and the pruning bridge (`OptunaPruningScheduler`, `PrunedFlag`, the median pruner)
on the driver's Optuna storage (farm_sweep/sweep/driver_storage.py). Per result, in the order Tune's
controller calls them: the scheduler (the intermediate value to Optuna, the pruner's decision), the searcher's
`on_trial_result`, `PrunedFlag`, Tune's own record of the trial's last result. A trial starts with the
searcher's `suggest` and ends pruned, or complete after its last epoch, with the searcher's
`on_trial_complete`; every second the searcher is saved as Tune's experiment snapshot saves it. With
tracking, every write the tracker makes for a trial is made too: its MLflow child run as it starts, its
epoch's metrics with every result (in a study the trial's own process writes these, to the same store),
its status at the end (`TrackingCallback`, in the driver). Live trials report in turn, epoch after epoch; a
trial that ends makes room for the next one. A trial's validation value falls with the epochs towards a
level set by its learning rate, so the median pruner prunes as in a real study.

1. Scale: one simulated study of --trials trials, --concurrent at once, of up to --epochs epochs (default
   2,000 x 1,000 x 100: a first wave of 1,000 trials, then 1,000 more that the pruner judges against the
   completed ones), without tracking: results per second (wall, and per second of the driver's own CPU time,
   which other work on a shared machine does not inflate) and the driver's peak resident memory (RSS).
2. Optuna's storage against the driver's, side by side: the Optuna calls the pruning bridge makes (ask,
   report and should_prune every epoch, tell) on a study (--compare-trials, --compare-concurrent,
   --compare-epochs) through Optuna's own RDBStorage and through the driver's storage.
3. The driver without and with tracking, side by side, on the same study size.

Comparisons are timed by the project's benchmark method (farm_sweep/timing.py: interleaved, a warm-up round,
two runs of 5 rounds, median [min-max], a ratio published when the runs agree); each round is a fresh study
in fresh stores.

    python bench/driver_scale.py [--trials 2000] [--concurrent 1000] [--epochs 100] [--compare-trials 20]
        [--compare-concurrent 10] [--compare-epochs 20] [--skip-scale | --skip-compare] [--profile FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import itertools
import logging
import math
import pstats
import random
import resource
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import optuna
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from farm_sweep.sweep import driver_storage, tracking
from farm_sweep.sweep.experiment import MODE
from farm_sweep.sweep.pruning import OptunaLink, OptunaPruningScheduler, PrunedFlag, PruningOptunaSearch, make_pruner
from farm_sweep.sweep.reports import FINAL_STEP_KEY, PRUNED_KEY, STEP_KEY
from farm_sweep.sweep.results_table import METRIC
from farm_sweep.sweep.search_space import Parameter, SearchSpace, make_sampler
from farm_sweep.timing import MIN_ROUNDS, RUNS, Measurement, describe, measure

NAME = "driver_scale"
SPACE = SearchSpace((Parameter("lr", "log_float", low=1e-5, high=3e-2),
                     Parameter("num_orderings", "categorical", choices=(1, 2, 4, 8))))
PRUNER = {"n_startup_trials": 5, "n_warmup_steps": 2}  # the quickstart's median pruner, a little more eager
SNAPSHOT_EVERY_S = 1.0  # Tune snapshots a study's experiment, the searcher with it, every second


@dataclass(frozen=True)
class Scale:
    trials: int
    concurrent: int
    epochs: int

    def describe(self) -> str:
        return f"{self.trials} trials ({self.concurrent} at once) x up to {self.epochs} epochs"


@dataclass(frozen=True)
class Outcome:
    results: int
    pruned: int
    completed: int
    seconds: float  # wall
    cpu_seconds: float  # this process's own CPU time

    @property
    def per_second(self) -> float:
        return self.results / self.seconds


class SimulatedStudy(Protocol):
    def start(self) -> Any: ...

    def report(self, trial: Any, epoch: int) -> bool:
        """Feed the trial's result for `epoch`; whether the trial was pruned."""

    def end(self, trial: Any, pruned: bool) -> None: ...

    def snapshot(self) -> None: ...


def run(study: SimulatedStudy, scale: Scale) -> Outcome:
    """Live trials report in turn, epoch after epoch; one that ends makes room for the next."""
    began, cpu_began = time.perf_counter(), time.process_time()
    last_snapshot = began
    waiting, live = iter(range(scale.trials)), deque[tuple[Any, int]]()
    results = pruned = completed = 0
    live.extend((study.start(), 1) for _ in itertools.islice(waiting, scale.concurrent))
    while live:
        trial, epoch = live.popleft()
        stopped = study.report(trial, epoch)
        results += 1
        if stopped or epoch == scale.epochs:
            study.end(trial, stopped)
            pruned, completed = pruned + stopped, completed + (not stopped)
            if next(waiting, None) is not None:
                live.append((study.start(), 1))
        else:
            live.append((trial, epoch + 1))
        if time.perf_counter() - last_snapshot >= SNAPSHOT_EVERY_S:
            study.snapshot()
            last_snapshot = time.perf_counter()
    study.snapshot()
    if pruned + completed != scale.trials:
        raise AssertionError(f"the simulation lost trials: {pruned} pruned + {completed} completed")
    return Outcome(results, pruned, completed, time.perf_counter() - began, time.process_time() - cpu_began)


class Results:
    """Synthetic reports: the validation value falls as 1/epoch towards a level that is best at lr 3e-3."""

    def __init__(self, seed: int = 0) -> None:
        self.random = random.Random(seed)

    def value(self, lr: float, epoch: int) -> float:
        return 20 + 6 * abs(math.log10(lr / 3e-3)) + self.random.gauss(0, 0.3) + 40 / epoch

    def report(self, config: Mapping[str, Any], epoch: int, epochs: int) -> dict[str, Any]:
        """A trial's report as a trial makes it (per-ordering values included)."""
        nll = self.value(config["lr"], epoch)
        orderings = {f"nll_image_ordering_{i}": nll + self.random.gauss(0, 0.5) for i in range(config["num_orderings"])}
        return {STEP_KEY: epoch, FINAL_STEP_KEY: epochs, METRIC: nll, "train_loss": nll * 0.98,
                "main_loss": nll * 0.98, "divergence": 0.0, "seconds": 1.0, **orderings}


class SimulatedDriver:
    """A study's driver-side components on fresh stores in `folder`, built as the runner builds them."""

    def __init__(self, folder: Path, epochs: int, tracked: bool, seed: int = 0) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.epochs, self.results = folder, epochs, Results(seed)
        self.link = OptunaLink(f"sqlite:///{folder / 'optuna.db'}", NAME, make_pruner("median", PRUNER, epochs))
        storage = driver_storage.open_fresh(self.link.storage_url)
        optuna.create_study(study_name=NAME, storage=storage, direction="minimize")
        self.searcher = PruningOptunaSearch(space=SPACE, metric=METRIC, mode=MODE, study_name=NAME, storage=storage,
                                            sampler=make_sampler("tpe", {}, SPACE, seed))
        self.scheduler, self.flag = OptunaPruningScheduler(self.link, METRIC), PrunedFlag(self.link)
        if tracked:  # a copy of an empty store: MLflow creates its tables in seconds, a copy takes milliseconds
            shutil.copyfile(empty_mlflow_store(folder.parent), folder / "mlflow.db")
        self.tracker = tracking.start(NAME, folder, tracking.default_uri(folder), {}, [], "simulated") if tracked \
            else None
        self.callback = tracking.TrackingCallback(self.tracker) if self.tracker else None
        self.runs: dict[str, str] = {}

    def start(self) -> Trial:
        trial = Trial(NAME, stub=True)
        trial.set_config(self.searcher.suggest(trial.trial_id))
        trial.set_status(Trial.RUNNING)
        if self.tracker:  # the trial's own run, created as it starts
            self.runs[trial.trial_id] = self.tracker.child_run(trial.trial_id, f"trial_{trial.trial_id}",
                                                               trial.config, {})
        return trial

    def report(self, trial: Trial, epoch: int) -> bool:
        """One result, through what Tune's controller calls for it, in its order."""
        result = self.results.report(trial.config, epoch, self.epochs)
        if self.tracker:  # the trial logs the epoch before it reports it
            self.tracker.log_metrics(self.runs[trial.trial_id], result, step=epoch)
        decision = self.scheduler.on_trial_result(None, trial, dict(result))
        if decision != TrialScheduler.STOP:
            self.searcher.on_trial_result(trial.trial_id, result)
        self.flag.on_trial_result(0, [], trial, result)
        trial.update_last_result(result)
        if result[PRUNED_KEY] != (decision == TrialScheduler.STOP):
            raise AssertionError(f"PrunedFlag and the scheduler disagree on {trial.trial_id} at epoch {epoch}")
        return result[PRUNED_KEY]

    def end(self, trial: Trial, pruned: bool) -> None:
        trial.set_status(Trial.TERMINATED)
        self.searcher.on_trial_complete(trial.trial_id, trial.last_result)
        if self.callback:
            self.callback.on_trial_complete(0, [], trial)

    def snapshot(self) -> None:
        self.searcher.save_to_dir(str(self.folder))


class BridgeCalls:
    """The Optuna calls the pruning bridge makes, through Optuna's public API, on a given storage."""

    def __init__(self, storage: str | optuna.storages.BaseStorage, epochs: int, seed: int = 0) -> None:
        self.storage, self.epochs, self.results = storage, epochs, Results(seed)
        self.last: dict[int, float] = {}  # each trial's last value, by number
        self.study = optuna.create_study(study_name=NAME, storage=storage, sampler=make_sampler("tpe", {}, SPACE, seed),
                                         pruner=make_pruner("median", PRUNER, epochs))

    def start(self) -> optuna.Trial:
        trial = self.study.ask()
        SPACE(trial)
        return trial

    def report(self, trial: optuna.Trial, epoch: int) -> bool:
        self.last[trial.number] = self.results.value(trial.params["lr"], epoch)
        trial.report(self.last[trial.number], epoch)
        return epoch < self.epochs and trial.should_prune()

    def end(self, trial: optuna.Trial, pruned: bool) -> None:
        if pruned:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(trial, self.last[trial.number])

    def snapshot(self) -> None:
        if isinstance(self.storage, driver_storage.DriverStorage):
            self.storage.flush()


@functools.cache
def empty_mlflow_store(scratch: Path) -> Path:
    """An MLflow SQLite store with its tables and nothing else, made once in `scratch`."""
    (scratch / "empty").mkdir(parents=True, exist_ok=True)
    tracking.client(tracking.default_uri(scratch / "empty")).search_experiments()
    return scratch / "empty" / "mlflow.db"


def rss_mib() -> float:
    """This process's resident memory now (MiB)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def at_scale(scale: Scale, scratch: Path, profile: Path | None) -> None:
    before = rss_mib()
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    outcome = run(SimulatedDriver(scratch / "scale", scale.epochs, tracked=False), scale)
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
        pstats.Stats(str(profile)).sort_stats("cumulative").print_stats(40)
    print(f"scale: {scale.describe()}, the driver without tracking: {outcome.results} results "
          f"({outcome.completed} trials completed, {outcome.pruned} pruned) in {outcome.seconds:.1f} s: "
          f"{outcome.per_second:.0f} results/s wall, {outcome.results / outcome.cpu_seconds:.0f} per CPU second; "
          f"driver RSS {before:.0f} MiB before, peak {peak_rss_mib():.0f} MiB", flush=True)


def side_by_side(title: str, scale: Scale, settings: Mapping[str, Callable[[Path], SimulatedStudy]],
                 scratch: Path) -> None:
    """Time a fresh simulated study of each setting per round, interleaved, and print results/s per setting and
    the ratio. The studies and their stores are all made first: a round times the study alone."""
    folders = (scratch / f"study_{n}" for n in itertools.count())
    rounds = 1 + RUNS * MIN_ROUNDS  # the method's warm-up round and timed rounds
    prepared = {name: deque(make(next(folders)) for _ in range(rounds)) for name, make in settings.items()}
    outcomes: dict[str, list[Outcome]] = {name: [] for name in settings}

    def one_study(name: str) -> Callable[[], None]:
        return lambda: outcomes[name].append(run(prepared[name].popleft(), scale))

    timed = measure({name: one_study(name) for name in settings})
    print(f"\n{title}: {scale.describe()} ({describe(timed)}):")
    for name in settings:
        timing, results = timed.timing(name), {outcome.results for outcome in outcomes[name]}
        print(f"  {name:<36} {timing.median:7.2f} s [{timing.low:.2f}-{timing.high:.2f}]  "
              f"{min(results) / timing.median:6.0f} results/s [{min(results) / timing.high:.0f}-"
              f"{min(results) / timing.low:.0f}]  (results per study: {sorted(results)})")
    print_ratio(timed, *settings)


def print_ratio(timed: Measurement, first: str, second: str) -> None:
    ratio, runs = timed.ratio(first, second), ", ".join(f"{r:.2f}" for r in timed.run_ratios(first, second))
    print(f"  time {first} / {second}: {ratio:.2f}" if ratio else
          f"  ratio not published: the runs disagree ({runs})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--concurrent", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--compare-trials", type=int, default=20)
    parser.add_argument("--compare-concurrent", type=int, default=10)
    parser.add_argument("--compare-epochs", type=int, default=20)
    parser.add_argument("--skip-scale", action="store_true", help="only the side-by-side comparisons")
    parser.add_argument("--skip-compare", action="store_true", help="only the study at scale")
    parser.add_argument("--profile", type=Path, help="cProfile the scale run into this file and print its top")
    args = parser.parse_args()
    logging.getLogger("ray").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    compare = Scale(args.compare_trials, args.compare_concurrent, args.compare_epochs)
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        if not args.skip_scale:
            at_scale(Scale(args.trials, args.concurrent, args.epochs), scratch, args.profile)
        if args.skip_compare:
            return
        side_by_side("the pruning bridge's Optuna calls", compare, {
            "on Optuna's RDBStorage": lambda where: BridgeCalls(f"sqlite:///{where}.db", compare.epochs),
            "on the driver's storage": lambda where: BridgeCalls(driver_storage.open_fresh(f"sqlite:///{where}.db"),
                                                                 compare.epochs)}, scratch)
        side_by_side("the driver", compare, {
            "with tracking": lambda where: SimulatedDriver(where, compare.epochs, tracked=True),
            "without tracking": lambda where: SimulatedDriver(where, compare.epochs, tracked=False)}, scratch)


if __name__ == "__main__":
    main()
