"""Configurations the sampler proposes again.

A trial's configuration is the study's fixed values plus its sampled parameters, its seed among them, so a
proposal equal to a completed trial's parameters would train the same model once more. TPE and random
sampling do propose such repeats, once a categorical space is small or TPE has settled on a point. As Optuna's
FAQ advises for duplicated samples, the searcher answers a repeat from the completed trial: it tells Optuna the
earlier trial's value(s), marks the new Optuna trial with `farm.repeat_of`, and asks again, without starting
a Tune trial (so a repeat does not use up the study's `trials`). A proposal equal to a trial still running is
trained: its value is not known yet.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from farm_sweep.sweep.search_space import point_text

REPEAT_OF_ATTR = "farm.repeat_of"
MAX_IN_A_ROW = 20  # proposals in a row that all repeat completed trials: the sampler has nothing new to offer
EXHAUSTED = (f"the sampler proposed {MAX_IN_A_ROW} configurations in a row that completed trials had already "
             "trained: the search ends here, with fewer trials than the study's `trials`")


def completed_twin(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial | None:
    """The first completed trial of `study` trained with exactly the parameters of `trial` (not itself an
    answered repeat), or None."""
    for earlier in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if earlier.params == trial.params and REPEAT_OF_ATTR not in earlier.user_attrs:
            return earlier
    return None


def answer(study: optuna.Study, trial: optuna.Trial, twin: FrozenTrial) -> None:
    """Complete `trial` with the value(s) of `twin`, its completed twin, and say so on the console."""
    trial.set_user_attr(REPEAT_OF_ATTR, twin.number)
    study.tell(trial, twin.values)
    values = ", ".join(f"{value:.3f}" for value in twin.values)
    print(f"optuna trial {trial.number} {point_text(trial.params)} repeats optuna trial {twin.number}: "
          f"answered with its value {values}, not trained again", flush=True)
