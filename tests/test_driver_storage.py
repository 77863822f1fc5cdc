"""The driver's Optuna storage against Optuna's own, on real SQLite databases: the same study, the same records;
intermediate values reach the database in batches, and nothing queued is lost at a trial's end or a flush."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest

from farm_sweep.sweep import driver_storage
from farm_sweep.sweep.pruning import OptunaLink, PruningOptunaSearch
from farm_sweep.sweep.search_space import OPTUNA_TRIAL_KEY

optuna.logging.set_verbosity(optuna.logging.WARNING)


def objective(trial: optuna.Trial) -> float:
    """A pruned search: lr decides the level a trial's value falls to, step after step."""
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    width = trial.suggest_categorical("width", [8, 16, 32])
    trial.set_user_attr("width_label", f"w{width}")
    value = 0.0
    for step in range(1, 9):
        value = abs(lr - 3e-3) * 100 + 10 / step + width / 100
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return value


def records(url: str) -> list[tuple]:
    """Every trial as a fresh Optuna storage reads it from the database."""
    study = optuna.load_study(study_name="s", storage=url)
    return [(t.number, t.state, t.values, t.params, t.intermediate_values, t.user_attrs, t.system_attrs)
            for t in study.get_trials(deepcopy=False)]


def run(storage: optuna.storages.BaseStorage | str) -> optuna.Study:
    study = optuna.create_study(study_name="s", storage=storage, sampler=optuna.samplers.TPESampler(seed=3),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
    study.enqueue_trial({"lr": 3e-3, "width": 8})
    study.optimize(objective, n_trials=16)
    return study


def test_the_same_search_leaves_the_same_records_as_optunas_own_storage(tmp_path: Path) -> None:
    reference, driven = f"sqlite:///{tmp_path / 'reference.db'}", f"sqlite:///{tmp_path / 'driven.db'}"
    run(reference)
    study = run(driver_storage.open_fresh(driven))
    driver_storage.shared(driven).flush()
    expected = records(reference)
    assert {record[1] for record in expected} == {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert records(driven) == expected
    in_memory = [(t.number, t.state, t.values, t.params, t.intermediate_values, t.user_attrs, t.system_attrs)
                 for t in study.get_trials(deepcopy=False)]
    assert in_memory == expected


def test_values_are_written_in_batches_and_before_a_trial_ends(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = driver_storage.open_fresh(url)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    trial.report(1.5, 1)
    trial.report(1.25, 2)
    assert records(url)[0][4] == {}  # queued
    assert study.trials[0].intermediate_values == {1: 1.5, 2: 1.25}  # the driver sees its own writes
    storage.flush()
    assert records(url)[0][4] == {1: 1.5, 2: 1.25}
    trial.report(1.0, 3)
    study.tell(trial, 1.0)
    assert records(url)[0][1:5] == (optuna.trial.TrialState.COMPLETE, [1.0], {}, {1: 1.5, 2: 1.25, 3: 1.0})
    with pytest.raises(RuntimeError, match="has already finished"):  # Optuna's own error for a finished trial
        storage.set_trial_intermediate_value(trial._trial_id, 4, 0.5)


def test_a_pickled_storage_is_this_processs_storage_of_its_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = driver_storage.open_fresh(url)
    assert pickle.loads(pickle.dumps(storage)) is storage
    assert len(pickle.dumps(storage)) < 300  # the URL, not what it has read
    assert driver_storage.open_fresh(url) is not storage


def test_on_resume_the_runner_and_the_restored_searcher_share_one_view_of_the_study(tmp_path: Path) -> None:
    """--resume: the runner reads the study afresh and fails an orphan through its link; the searcher Tune
    restores (its pickle names the storage by URL) tells a trial its older state lacks through that same storage."""
    url, space = f"sqlite:///{tmp_path / 'optuna.db'}", {"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1)}
    optuna.create_study(study_name="s", storage=url)
    searcher = PruningOptunaSearch(space=space, metric="nll_image", mode="min", study_name="s",
                                   storage=driver_storage.shared(url))
    searcher.save(str(tmp_path / "searcher.pkl"))  # the snapshot, older than the two trials asked for next
    for _ in range(2):
        searcher._ot_study.ask(space)
    link = OptunaLink(url, "s")
    link.open_fresh()
    link.study.tell(1, state=optuna.trial.TrialState.FAIL)  # an orphan, as the runner fails it
    restored = PruningOptunaSearch(space=space, metric="nll_image", mode="min", study_name="s",
                                   storage=driver_storage.shared(url))
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("a1b2c3d4", result={"nll_image": 2.5, f"config/{OPTUNA_TRIAL_KEY}": 0})
    expected = [(optuna.trial.TrialState.COMPLETE, [2.5]), (optuna.trial.TrialState.FAIL, None)]
    assert [(link.frozen(number).state, link.frozen(number).values) for number in (0, 1)] == expected
    assert [record[1:3] for record in records(url)] == expected


def test_a_searcher_state_saved_with_a_plain_optuna_storage_resumes_on_the_shared_one(tmp_path: Path) -> None:
    """A study started before the driver shared one storage pickled its searcher with Optuna's own RDBStorage;
    restored, the searcher uses the driver's storage (so Tune's snapshots flush it) and keeps its sampler."""
    url, space = f"sqlite:///{tmp_path / 'optuna.db'}", {"lr": optuna.distributions.FloatDistribution(1e-3, 1e-1)}
    optuna.create_study(study_name="s", storage=url)
    older = PruningOptunaSearch(space=space, metric="nll_image", mode="min", study_name="s",
                                sampler=optuna.samplers.RandomSampler(seed=5),
                                storage=optuna.storages.RDBStorage(url))
    older._ot_study.ask(space)
    older.save(str(tmp_path / "searcher.pkl"))

    restored = PruningOptunaSearch(space=space, metric="nll_image", mode="min", study_name="s",
                                   storage=driver_storage.shared(url))
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored._storage is driver_storage.shared(url)
    assert restored._ot_study._storage is driver_storage.shared(url)
    assert isinstance(restored._ot_study.sampler, optuna.samplers.RandomSampler)  # the saved one, not the default
    restored.save_to_dir(str(tmp_path))  # a snapshot flushes the shared storage
    restored._ot_trials["a1b2c3d4"] = 0
    restored.on_trial_complete("a1b2c3d4", result={"nll_image": 2.5})
    assert [record[1:3] for record in records(url)] == [(optuna.trial.TrialState.COMPLETE, [2.5])]
