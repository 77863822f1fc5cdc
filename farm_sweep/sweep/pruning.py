"""Optuna's pruners inside Ray Tune.

Ray's OptunaSearch creates its Optuna study with a no-op pruner and only samples. The bridge here:

- `OptunaPruningScheduler`, a Tune scheduler: for every result it reports the metric to the trial's Optuna
  trial as the intermediate value at step = epoch (epochs trained so far, 1, 2, ...), asks the study's
  pruner, and on "prune" tells Optuna the trial is PRUNED and returns STOP. A trial's last epoch is never
  pruned (its training is already done). The scheduler is the only writer of intermediate values.
- `PrunedFlag`, a Tune callback that writes `pruned: True/False` into every result, so pruned trials are
  marked in Ray's results (Tune lets callbacks edit a result in place; schedulers get a copy).
- `PruningOptunaSearch`, OptunaSearch that leaves intermediate values to the scheduler and does not
  overwrite the PRUNED state of a pruned trial with COMPLETE; with several objectives (no pruning), a trial
  that ends without reporting one of them is FAILed (Ray's OptunaSearch would leave it RUNNING); a trial
  that Tune restored on `--resume` but the searcher's older saved state lacks is told by its number.

The Tune trial finds its Optuna trial through the number the search space adds to its config
(`optuna_trial`). The Optuna study lives in storage (SQLite by default, or a database server:
farm_sweep.sweep.stores), the single source of truth, so all three objects are stateless and survive Tune's
pickling on `--resume`.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from ray.tune.callback import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from farm_sweep.sweep import stores
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
    """A lazily opened handle on one Optuna study in storage; pickles as (storage URL without its password,
    study name, pruner)."""

    def __init__(self, storage_url: str, study_name: str, pruner: optuna.pruners.BasePruner | None = None) -> None:
        self.storage_url, self.study_name, self.pruner = stores.remember(storage_url), study_name, pruner
        self._storage: optuna.storages.RDBStorage | None = None
        self._study: optuna.Study | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_storage": None, "_study": None}

    @property
    def study(self) -> optuna.Study:
        return self._open()[1]

    def _open(self) -> tuple[optuna.storages.RDBStorage, optuna.Study]:
        if self._storage is None or self._study is None:
            self._storage = stores.optuna_storage(self.storage_url)
            self._study = optuna.load_study(study_name=self.study_name, storage=self._storage,
                                            pruner=self.pruner or optuna.pruners.NopPruner())
        return self._storage, self._study

    def trial(self, number: int) -> optuna.Trial:
        """The live trial (report, should_prune) for an Optuna trial number."""
        return optuna.Trial(self.study, self._trial_id(number))

    def frozen(self, number: int) -> optuna.trial.FrozenTrial:
        """The trial's current record, read from storage (no cache)."""
        return self._open()[0].get_trial(self._trial_id(number))

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
        optuna_trial = self.link.trial(number)
        if step not in frozen.intermediate_values:
            optuna_trial.report(float(result[self._metric]), step)
        if step < result[FINAL_STEP_KEY] and optuna_trial.should_prune():
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

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Intermediate values are reported by the scheduler (step = epoch)."""

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if result and result.get(PRUNED_KEY):
            return  # already told PRUNED by the scheduler
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
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)

    def _adopt(self, trial_id: str, result: dict[str, Any] | None) -> bool:
        """Take on a trial that Tune restored but this searcher's restored state lacks (a driver killed while Tune
        copied a snapshot: its trials newer than its searcher's state), by the Optuna trial number in the
        trial's config, which Tune's flattened result carries. Optuna's tell() takes that number."""
        number = (result or {}).get(f"config/{OPTUNA_TRIAL_KEY}")
        if number is None:
            return False
        self._ot_trials[trial_id] = int(number)
        return True
