"""The driver's Optuna storage: the study's database (an RDBStorage, SQLite by default) with reads answered from
the driver's memory, and parameters, attributes and intermediate values written in batches.

The driver is the one process that writes a study's Optuna records: its searcher asks and tells, its pruning
scheduler reports intermediate values and prunes; trials never touch Optuna, and one run holds an output folder
at a time (output_lock). So what the driver read once and wrote since is what the database holds, and it can
answer reads itself. Optuna's own cache (`_CachedStorage`, what a plain RDBStorage becomes) reads every unfinished
trial again, with all its intermediate values, on every query of the study's trials: once per result for the
pruner, a cost that grows with the running trials times their epochs (about 3 results a second at 40 trials x
20 epochs, bench/driver_scale.py). And SQLite makes every commit durable on disk, so a commit per value caps
the driver at about 50 values a second on this project's test machine.

Writes: a new trial and a change of a trial's state (with its final values) are written at once, as by
RDBStorage. Parameters, attributes and intermediate values are queued (what Optuna would update rather than
insert is written at once) and inserted together, in one transaction: when the oldest has waited
FLUSH_EVERY_S, before any change of a trial's state (so a finished trial's records are all stored first, as
Optuna promises), and on `flush()`, which the searcher calls whenever Ray Tune snapshots the experiment
(`PruningOptunaSearch.save_to_dir`), before the snapshot reaches the output folder. A driver killed at any
moment has therefore stored every record of the trials and results in the snapshot `--resume` restarts from;
the results after it are reported again.

One instance per database and process (`shared`): the searcher and the pruning bridge must see each other's
writes, also after Tune unpickles them for `--resume` (an instance pickles as its URL without the password;
the database is opened as farm_sweep.sweep.stores opens Optuna's storage). The queued inserts use
Optuna's table models (`optuna.storages._rdb.models`), so this module is tied to the pinned Optuna version.
"""

from __future__ import annotations

import copy
import json
import math
import threading
import time
import weakref
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy
from optuna.distributions import BaseDistribution, check_distribution_compatibility, distribution_to_json
from optuna.storages import BaseStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from farm_sweep.sweep import stores

FLUSH_EVERY_S = 1.0  # as often as the runner has Tune snapshot its experiment (cluster.connect)

_instances: weakref.WeakValueDictionary[str, DriverStorage] = weakref.WeakValueDictionary()
_instances_lock = threading.Lock()


def open_fresh(url: str) -> DriverStorage:
    """A new storage for `url`, read from the database, that `shared(url)` returns from now on in this process."""
    with _instances_lock:
        storage = _instances[stores.public(url)] = DriverStorage(url)
        return storage


def shared(url: str) -> DriverStorage:
    """This process's storage for `url` (opened on first use)."""
    with _instances_lock:
        storage = _instances.get(stores.public(url))
        if storage is None:
            storage = _instances[stores.public(url)] = DriverStorage(url)
        return storage


@dataclass
class _KnownStudy:
    """A study read whole from the database once: its trial ids by number (in number order), the distribution of
    each parameter, and its lists of finished trials by states asked for (what pruners and samplers ask for on
    every result), kept until a trial's state changes."""

    trial_ids: dict[int, int] = field(default_factory=dict)
    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    finished: dict[frozenset[TrialState], list[FrozenTrial]] = field(default_factory=dict)


class DriverStorage(BaseStorage):
    def __init__(self, url: str) -> None:
        self.url = stores.public(url)  # what a pickle holds: the password stays in memory (stores)
        self._backend = stores.optuna_storage(url)
        self._lock = threading.RLock()
        self._trials: dict[int, FrozenTrial] = {}  # by trial id: as stored, queued values included
        self._studies: dict[int, _KnownStudy] = {}
        self._study_of: dict[int, int] = {}  # trial id -> study id
        self._study_ids: dict[str, int] = {}
        self._directions: dict[int, list[StudyDirection]] = {}
        self._queued: dict[type[models.BaseModel], list[dict[str, Any]]] = {  # rows to insert, by table
            model: [] for model in (models.TrialParamModel, models.TrialIntermediateValueModel,
                                    models.TrialUserAttributeModel, models.TrialSystemAttributeModel)}
        self._oldest_queued = math.inf  # when the oldest row still queued was queued

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return shared, (self.url,)

    def flush(self) -> None:
        """Write the queued rows (parameters, attributes, intermediate values), in one transaction."""
        with self._lock:
            if self._oldest_queued == math.inf:
                return
            with _create_scoped_session(self._backend.scoped_session) as session:
                for model, rows in self._queued.items():
                    if rows:
                        session.execute(sqlalchemy.insert(model), rows)
            for rows in self._queued.values():
                rows.clear()
            self._oldest_queued = math.inf

    def _queue(self, model: type[models.BaseModel], row: dict[str, Any]) -> None:
        now = time.monotonic()
        self._queued[model].append(row)
        self._oldest_queued = min(self._oldest_queued, now)
        if now - self._oldest_queued >= FLUSH_EVERY_S:
            self.flush()

    # ---------------------------------------------------------- studies: the database's answers, a few remembered

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self._backend.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        with self._lock:
            self.flush()
            self._backend.delete_study(study_id)
            for trial_id in self._studies.pop(study_id, _KnownStudy()).trial_ids.values():
                self._trials.pop(trial_id, None)
                self._study_of.pop(trial_id, None)
            self._study_ids = {name: known for name, known in self._study_ids.items() if known != study_id}

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._backend.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._backend.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        if study_name not in self._study_ids:
            self._study_ids[study_name] = self._backend.get_study_id_from_name(study_name)
        return self._study_ids[study_name]

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._backend.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        if study_id not in self._directions:
            self._directions[study_id] = self._backend.get_study_directions(study_id)
        return self._directions[study_id]

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._backend.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._backend.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self._backend.get_all_studies()

    # ---------------------------------------------------------- trials: written at once, read from memory

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        with self._lock:
            study = self._study(study_id)
            trial = self._backend._create_new_trial(study_id, template_trial)  # the new trial as stored
            self._remember(study_id, trial)
            study.distributions = {**trial.distributions, **study.distributions}
            return trial._trial_id

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        with self._lock:
            trial = self._trial(trial_id)
            if trial_id not in self._study_of or param_name in trial.params:  # Optuna's own checks and errors
                self._backend.set_trial_param(trial_id, param_name, param_value_internal, distribution)
                self._reread(trial_id)
                return
            self.check_trial_is_updatable(trial_id, trial.state)
            known = self._studies[self._study_of[trial_id]].distributions
            if param_name in known:
                check_distribution_compatibility(known[param_name], distribution)
            known.setdefault(param_name, distribution)
            self._queue(models.TrialParamModel, {"trial_id": trial_id, "param_name": param_name,
                                                 "param_value": param_value_internal,
                                                 "distribution_json": distribution_to_json(distribution)})
            updated = _detached(trial)
            updated.params[param_name] = distribution.to_external_repr(param_value_internal)
            updated.distributions[param_name] = distribution
            self._store(updated)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        with self._lock:
            self.flush()  # what was queued for the trial is stored before its state changes, as Optuna promises
            waiting = self._trial(trial_id).state == TrialState.WAITING
            if not self._backend.set_trial_state_values(trial_id, state, values):
                self._reread(trial_id)  # another writer came first (Optuna's answer for a trial taken twice)
                return False
            updated = _detached(self._trials[trial_id])
            updated.state, now = state, datetime.now()  # the database's times are within milliseconds of these
            if values is not None:
                updated.values = list(values)
            if state == TrialState.RUNNING and waiting:
                updated.datetime_start = now
            if state.is_finished():
                updated.datetime_complete = now
            self._store(updated)
            return True

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        with self._lock:
            trial = self._trial(trial_id)
            self.check_trial_is_updatable(trial_id, trial.state)
            if step in trial.intermediate_values:  # a new value for a step: Optuna's own update, at once
                self.flush()
                self._backend.set_trial_intermediate_value(trial_id, step, intermediate_value)
                self._reread(trial_id)
                return
            stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(intermediate_value)
            updated = _detached(trial)  # lists handed out earlier keep the trial as it was
            updated.intermediate_values[step] = intermediate_value
            self._store(updated)
            self._queue(models.TrialIntermediateValueModel, {"trial_id": trial_id, "step": step,
                                                             "intermediate_value": stored,
                                                             "intermediate_value_type": kind})

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_attr(trial_id, models.TrialUserAttributeModel, "user_attrs", key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._set_attr(trial_id, models.TrialSystemAttributeModel, "system_attrs", key, value)

    def _set_attr(self, trial_id: int, model: type[models.BaseModel], field_name: str, key: str, value: Any) -> None:
        with self._lock:
            trial = self._trial(trial_id)
            if key in getattr(trial, field_name):  # a new value for a key: Optuna's own update, at once
                self.flush()
                getattr(self._backend, f"set_trial_{field_name[:-1]}")(trial_id, key, value)
                self._reread(trial_id)
                return
            self.check_trial_is_updatable(trial_id, trial.state)
            text = json.dumps(value)
            updated = _detached(trial)
            getattr(updated, field_name)[key] = json.loads(text)  # as the database gives it back
            self._store(updated)
            self._queue(model, {"trial_id": trial_id, "key": key, "value_json": text})

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        with self._lock:
            trial_id = self._study(study_id).trial_ids.get(trial_number)
        if trial_id is None:  # Optuna's error for a number the study does not have
            return self._backend.get_trial_id_from_study_id_trial_number(study_id, trial_number)
        return trial_id

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._lock:
            return _detached(self._trial(trial_id))

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        with self._lock:
            study = self._study(study_id)
            wanted = frozenset(states) if isinstance(states, tuple | list | set | frozenset) else None
            if wanted and all(state.is_finished() for state in wanted):
                if wanted not in study.finished:
                    study.finished[wanted] = self._trials_of(study, wanted)
                trials = list(study.finished[wanted])
            else:
                trials = self._trials_of(study, states)
        return copy.deepcopy(trials) if deepcopy else trials

    def _trials_of(self, study: _KnownStudy, states: Container[TrialState] | None) -> list[FrozenTrial]:
        trials = (self._trials[trial_id] for trial_id in study.trial_ids.values())
        return [trial for trial in trials if states is None or trial.state in states]

    def _study(self, study_id: int) -> _KnownStudy:
        """The study, its trials read whole from the database the first time."""
        if study_id not in self._studies:
            self._studies[study_id] = _KnownStudy()
            for trial in sorted(self._backend.get_all_trials(study_id, deepcopy=False), key=lambda t: t.number):
                self._remember(study_id, trial)
                self._studies[study_id].distributions.update(trial.distributions)
        return self._studies[study_id]

    def _remember(self, study_id: int, trial: FrozenTrial) -> None:
        """A trial new to this storage (Optuna numbers a study's trials in order: trial_ids stays in order)."""
        self._study_of[trial._trial_id] = study_id
        self._studies[study_id].trial_ids[trial.number] = trial._trial_id
        self._store(trial)

    def _store(self, trial: FrozenTrial) -> None:
        """Keep `trial` as its record; the lists of finished trials go when a trial's state changes."""
        before = self._trials.get(trial._trial_id)
        self._trials[trial._trial_id] = trial
        study = self._studies.get(self._study_of.get(trial._trial_id, -1))
        if study and (before is None or before.state != trial.state or trial.state.is_finished()):
            study.finished.clear()

    def _trial(self, trial_id: int) -> FrozenTrial:
        return self._trials[trial_id] if trial_id in self._trials else self._reread(trial_id)

    def _reread(self, trial_id: int) -> FrozenTrial:
        """The trial as the database holds it now, with what is still queued for it."""
        self.flush()
        self._store(self._backend.get_trial(trial_id))
        return self._trials[trial_id]


def _detached(trial: FrozenTrial) -> FrozenTrial:
    """A copy whose dictionaries can change without changing `trial` (its values themselves are immutable); made
    without copy.copy's generic protocol, which took most of the time of a result."""
    copied = object.__new__(FrozenTrial)
    copied.__dict__.update(trial.__dict__)
    copied.params, copied.distributions = dict(trial.params), dict(trial.distributions)
    copied.user_attrs, copied.system_attrs = dict(trial.user_attrs), dict(trial.system_attrs)
    copied.intermediate_values = dict(trial.intermediate_values)
    return copied
