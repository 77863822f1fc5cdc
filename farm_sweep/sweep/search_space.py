"""A study's search space: distributions, conditions, and the Optuna define-by-run function built from them.

Each sampled parameter is one `Parameter`: a distribution (categorical, int, float, log_float) and an
optional condition `when` ({other parameter: [values]}): the parameter is sampled only when every named
parameter took one of the listed values; otherwise it is left out and TrainConfig's default applies
(e.g. `divergence_weight` only when `divergence` is kl or jsd). Parameters are sampled in file order, so a
condition may only name parameters defined before it.

`SearchSpace` is the define-by-run function handed to Ray's OptunaSearch; it is a plain picklable object
(Tune saves its searcher with pickle). Categorical choices that Optuna cannot store (lists, e.g.
`hidden_sizes: [[32], [64, 64]]`) are suggested under their JSON text and decoded back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from farm_sweep.untrusted import quote

DISTRIBUTIONS = ("categorical", "int", "float", "log_float")
SAMPLERS = ("tpe", "random", "grid", "nsga2")
OPTUNA_TRIAL_KEY = "optuna_trial"  # the Optuna trial number, added to every Tune trial's config
_PRIMITIVE = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class Parameter:
    name: str
    distribution: str
    choices: tuple[Any, ...] = ()
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def active(self, values: dict[str, Any]) -> bool:
        """Whether the condition holds for the values sampled (or fixed) so far."""
        return all(name in values and values[name] in allowed for name, allowed in self.when.items())

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.distribution == "categorical":
            labels = [_label(choice) for choice in self.choices]
            return self.choices[labels.index(trial.suggest_categorical(self.name, labels))]
        if self.distribution == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1))
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step,
                                   log=self.distribution == "log_float")

    def corners(self) -> tuple[Any, ...]:
        """The values that bound what this parameter can take (for up-front validation)."""
        return self.choices if self.distribution == "categorical" else (self.low, self.high)

    def describe(self) -> str:
        if self.distribution == "categorical":
            text = f"{self.name}: categorical {quote(list(self.choices), 300)}"
        else:
            step = f" step {self.step}" if self.step else ""
            text = f"{self.name}: {self.distribution} [{self.low}, {self.high}]{step}"
        conditions = ", ".join(f"{name} in {list(values)}" for name, values in self.when.items())
        return f"{text} when {conditions}" if conditions else text

    def grid_values(self) -> Sequence[Any] | None:
        """Every value, for the grid sampler (a lazy range for ints); None for continuous distributions."""
        if self.distribution == "categorical":
            return [_label(choice) for choice in self.choices]
        if self.distribution == "int":
            return range(int(self.low), int(self.high) + 1, int(self.step or 1))
        return None


@dataclass(frozen=True)
class SearchSpace:
    """Sampled parameters in order, plus the values fixed for every trial."""

    parameters: tuple[Parameter, ...]
    fixed: dict[str, Any] = field(default_factory=dict)

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        """Optuna define-by-run: suggest every active parameter; return the decoded values."""
        values = dict(self.fixed)
        for parameter in self.parameters:
            if parameter.active(values):
                values[parameter.name] = parameter.suggest(trial)
        sampled = {name: value for name, value in values.items() if name not in self.fixed}
        return {**sampled, OPTUNA_TRIAL_KEY: trial.number}

    def scales(self) -> list[tuple[str, bool]]:
        """Each parameter's name and whether it is searched on a log scale (for figures)."""
        return [(parameter.name, parameter.distribution == "log_float") for parameter in self.parameters]

    def combinations(self) -> Iterator[dict[str, Any]]:
        """Fixed values joined with every combination of each active parameter's corner values."""
        def expand(index: int, values: dict[str, Any]) -> Iterator[dict[str, Any]]:
            if index == len(self.parameters):
                yield values
                return
            parameter = self.parameters[index]
            if not parameter.active(values):
                yield from expand(index + 1, values)
                return
            for value in parameter.corners():
                yield from expand(index + 1, {**values, parameter.name: value})
        return expand(0, dict(self.fixed))

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space (every parameter must be discrete and unconditional)."""
        return {p.name: list(p.grid_values()) for p in self.parameters}

    def grid_size(self) -> int:
        """How many configurations the grid has (without listing them)."""
        return math.prod(len(p.grid_values()) for p in self.parameters)

    def describe(self) -> list[str]:
        return [p.describe() for p in self.parameters]

    def as_optuna_point(self, point: dict[str, Any]) -> dict[str, Any]:
        """An enqueued point in Optuna's terms: categorical values that are lists or mappings become the
        JSON labels their parameters suggest."""
        categorical = {p.name for p in self.parameters if p.distribution == "categorical"}
        return {name: _label(value) if name in categorical else value for name, value in point.items()}


def point_text(values: Mapping[str, Any]) -> str:
    """A point of the search space in words, `lr=0.002 num_orderings=8` (floats to 3 significant digits), without
    the Optuna trial number."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in values.items() if k != OPTUNA_TRIAL_KEY)


def make_sampler(kind: str, options: dict[str, Any], space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    """Optuna's sampler for a study: TPE (default), random, grid or NSGA-II, seeded."""
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **options)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, **options)
    raise ValueError(f"unknown sampler {kind!r}; choose one of {', '.join(SAMPLERS)}")


def _label(choice: Any) -> Any:
    return choice if isinstance(choice, _PRIMITIVE) else json.dumps(choice)
