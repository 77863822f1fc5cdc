"""Optuna's pruners inside Ray Tune.

Ray's OptunaSearch creates its Optuna study with a no-op pruner and only samples. The bridge here:

- `OptunaPruningScheduler`, a Tune scheduler: for every result it reports the metric to the trial's Optuna
  trial as the intermediate value at step = epoch (epochs trained so far, 1, 2, ...), asks the study's
  pruner, and on "prune" tells Optuna the trial is PRUNED and returns STOP. A trial's last epoch is never
  pruned (its training is already done). The scheduler is the only writer of intermediate values.
- `PrunedFlag`, a Tune callback that writes `pruned: True/False` into every result, so pruned trials are
  marked in Ray's results (Tune lets callbacks edit a result in place; schedulers get a copy).
- `PruningOptunaSearch`, OptunaSearch that leaves intermediate values to the scheduler, does not
  overwrite the PRUNED state of a pruned trial with COMPLETE, and forgets finished trials (Tune pickles the
  searcher with every snapshot of the experiment, every second); with several objectives (no pruning), a trial
  that ends without reporting one of them is FAILed (Ray's OptunaSearch would leave it RUNNING); a trial
  that Tune restored on `--resume` but the searcher's older saved state lacks is told by its number; a
  proposal that repeats a completed trial is answered from it, not trained (farm_sweep.sweep.repeats).

The Tune trial finds its Optuna trial through the number the search space adds to its config
(`optuna_trial`). The Optuna study lives in storage (SQLite by default, or a database server:
farm_sweep.sweep.stores), the single source of truth, so all three objects are stateless and survive Tune's
pickling on `--resume`. In the driver they share one `farm_sweep.sweep.driver_storage.DriverStorage` per
database: reads from memory, parameters and intermediate values written in batches, flushed whenever Tune
snapshots the experiment (`PruningOptunaSearch.save_to_dir`).
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from ray.tune.callback import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from farm_sweep.sweep import driver_storage, repeats, stores
from farm_sweep.sweep.driver_storage import DriverStorage
from farm_sweep.sweep.reports import FINAL_STEP_KEY, PRUNED_KEY, STEP_KEY
from farm_sweep.sweep.search_space import OPTUNA_TRIAL_KEY

log = logging.getLogger(__name__)


def make_pruner(kind: str, options: dict[str, Any], max_epochs: int) -> optuna.pruners.BasePruner:
    """Optuna's pruner for a study; steps are epochs, so hyperband's default maximum is the epoch count."""
    if kind == "median":
        return optuna.pruners.MedianPruner(**options)
    if kind == "percentile":
        return optuna.pruners.PercentilePruner(**options)
    if kind == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**options)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(**{"max_resource": max_epochs, **options})
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {kind!r}")


class OptunaLink:
    """A lazily opened handle on one Optuna study in storage (this process's DriverStorage of the database);
    pickles as (storage URL without its password, study name, pruner)."""

    def __init__(self, storage_url: str, study_name: str, pruner: optuna.pruners.BasePruner | None = None) -> None:
        self.storage_url, self.study_name, self.pruner = stores.remember(storage_url), study_name, pruner
        self._storage: DriverStorage | None = None
        self._study: optuna.Study | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_storage": None, "_study": None}

    @property
    def study(self) -> optuna.Study:
        return self._open()[1]

    def open_fresh(self) -> None:
        """Read the study from the database again: forget what this process read of it before (an earlier run)."""
        self._storage, self._study = driver_storage.open_fresh(self.storage_url), None

    def flush(self) -> None:
        """Store the parameters and intermediate values still queued (driver_storage)."""
        self._open()[0].flush()

    def _open(self) -> tuple[DriverStorage, optuna.Study]:
        if self._storage is None or self._study is None:
            self._storage = self._storage or driver_storage.shared(self.storage_url)
            self._study = optuna.load_study(study_name=self.study_name, storage=self._storage,
                                            pruner=self.pruner or optuna.pruners.NopPruner())
        return self._storage, self._study

    def frozen(self, number: int) -> optuna.trial.FrozenTrial:
        """The trial's current record (a copy of it)."""
        return self._open()[0].get_trial(self._trial_id(number))

    def report(self, trial: optuna.trial.FrozenTrial, value: float, step: int) -> None:
        """Store an intermediate value of a running trial, and add it to `trial`, its record."""
        self._open()[0].set_trial_intermediate_value(trial._trial_id, step, value)
        trial.intermediate_values[step] = value

    def should_prune(self, trial: optuna.trial.FrozenTrial) -> bool:
        """The study's pruner on the trial's record, as optuna.Trial.should_prune asks it."""
        return self.study.pruner.prune(self.study, trial)

    def _trial_id(self, number: int) -> int:
        storage = self._open()[0]
        return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(self.study_name),
                                                              number)


class OptunaPruningScheduler(FIFOScheduler):
    """Report each result to Optuna and stop the trial when the Optuna study's pruner says so."""

    _supports_buffered_results = False  # decide on every epoch, not on a buffered batch

    def __init__(self, link: OptunaLink, metric: str) -> None:
        super().__init__()
        self.link, self._metric = link, metric

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        number, step = trial.config[OPTUNA_TRIAL_KEY], int(result[STEP_KEY])
        frozen = self.link.frozen(number)
        if frozen.state.is_finished():
            return TrialScheduler.STOP if frozen.state == optuna.trial.TrialState.PRUNED else TrialScheduler.CONTINUE
        if step not in frozen.intermediate_values:
            self.link.report(frozen, float(result[self._metric]), step)
        if step < result[FINAL_STEP_KEY] and self.link.should_prune(frozen):
            self.link.study.tell(number, state=optuna.trial.TrialState.PRUNED)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        """Accept Tune's metric (again on --resume) when it is the one this scheduler reports."""
        return metric in (None, self._metric) and mode in (None, "min")

    def debug_string(self) -> str:
        return f"Optuna pruner {type(self.link.pruner).__name__} on {self._metric}"


class PrunedFlag(Callback):
    """Mark every result with `pruned` (True once the scheduler pruned the trial)."""

    def __init__(self, link: OptunaLink) -> None:
        self.link = link

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        state = self.link.frozen(trial.config[OPTUNA_TRIAL_KEY]).state
        result[PRUNED_KEY] = state == optuna.trial.TrialState.PRUNED


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch for use with OptunaPruningScheduler (which reports the intermediate values)."""

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """Optuna's next configuration, asking again while the proposal repeats a completed trial (each repeat
        answered from its twin); Searcher.FINISHED once repeats.MAX_IN_A_ROW proposals in a row did."""
        for _ in range(repeats.MAX_IN_A_ROW):
            config = super().suggest(trial_id)
            twin = repeats.completed_twin(self._ot_study, self._ot_trials[trial_id])
            if twin is None:
                return config
            repeats.answer(self._ot_study, self._ot_trials.pop(trial_id), twin)
        print(repeats.EXHAUSTED, flush=True)
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Intermediate values are reported by the scheduler (step = epoch)."""

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:  # told already; gone from _ot_trials, so not to be adopted again
            super().on_trial_complete(trial_id, result, error)  # Ray's warning of a second completion
            return
        if not (result and result.get(PRUNED_KEY)):  # a pruned trial was told PRUNED by the scheduler
            self._tell(trial_id, result, error)
        self._completed_trials.add(trial_id)
        # Tune pickles the searcher with every snapshot: keep its live trials only, not every trial of the study
        self._ot_trials.pop(trial_id, None)

    def _tell(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        """Tell Optuna how a trial ended, as Ray's OptunaSearch does, also a trial this searcher's state lacks
        (`_adopt`); with several objectives, a trial that did not report all of them fails."""
        if trial_id not in self._ot_trials and not self._adopt(trial_id, result):
            log.warning("trial %s ended unknown to the searcher and without its Optuna trial number; its Optuna "
                        "trial fails at the end of the search", trial_id)
            return
        missing = [name for name in self.metric if result.get(name) is None] if result and isinstance(
            self.metric, list) else []
        if missing and not error:  # several objectives: Optuna takes all of them or none
            log.warning("trial %s ended without reporting the objective(s) %s; its Optuna trial fails", trial_id,
                        ", ".join(missing))
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.FAIL)
            return
        super().on_trial_complete(trial_id, result, error)

    def _adopt(self, trial_id: str, result: dict[str, Any] | None) -> bool:
        """Take on a trial that Tune restored but this searcher's restored state lacks (a driver killed while Tune
        copied a snapshot: its trials newer than its searcher's state), by the Optuna trial number in the
        trial's config, which Tune's flattened result carries. Optuna's tell() takes that number, through this
        searcher's study: the driver's shared DriverStorage, as the scheduler's and the runner's."""
        number = (result or {}).get(f"config/{OPTUNA_TRIAL_KEY}")
        if number is None:
            return False
        self._ot_trials[trial_id] = int(number)
        return True

    def restore(self, checkpoint_path: str) -> None:
        """The saved state, on this driver's one shared storage of the study. A state saved before the driver
        shared one storage (farm-sweep before driver_storage) holds a plain Optuna storage of its own, which
        neither queues writes nor sees what the scheduler stores; the study is loaded again on the shared one,
        keeping the saved sampler (its random state)."""
        super().restore(checkpoint_path)
        self._storage = driver_storage.shared(self._storage.url)
        self._ot_study = optuna.load_study(study_name=self._ot_study.study_name, storage=self._storage,
                                           sampler=self._ot_study.sampler)

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        """Tune snapshots the experiment: store the queued intermediate values before the snapshot is kept."""
        self._storage.flush()
        super().save_to_dir(checkpoint_dir, session_str)
