"""Study files and search-space files: schema, loading and validation (docs/studies.md is the reference).

`load_study(path)` reads a study YAML (yaml's SafeLoader, refusing duplicate keys), the search-space YAML it
names, checks every key and value, checks that every configuration the space can produce is a valid
TrainConfig whose data is present (checksums, format, shape) and whose orderings exist, and returns a
`Study`. Any problem raises `StudyError` naming the file, the field, the reason and the fix; nothing is
written.
"""

from __future__ import annotations

import difflib
import itertools
import math
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from farm_sweep.data import DataError, DatasetSpec
from farm_sweep.sweep.search_space import DISTRIBUTIONS, Parameter, SearchSpace
from farm_sweep.training import preflight
from farm_sweep.training.config import ConfigError, TrainConfig
from farm_sweep.untrusted import (
    MAX_NAME_LENGTH,
    QUOTE_CHARS,
    InputError,
    is_plain_name,
    load_yaml,
    quote,
    read_text,
)

MAX_CHECKED_COMBINATIONS = 2000  # corner configurations checked against TrainConfig before a study starts
MAX_GRID_SIZE = 100_000  # the grid sampler lists every configuration up front
MAX_SEED = 2**32 - 1  # NumPy's (and so Optuna's) seed range
MAX_CONFIRM_SEEDS = 100  # seeds per configuration in the confirmation stage


class StudyError(ValueError):
    """A study or search-space file that cannot run: the message names the file, the field and the reason."""

    def __init__(self, file: Path | str, field_name: str, reason: str) -> None:
        super().__init__(f"{file}: {field_name}: {reason}")
        self.file, self.field, self.reason = str(file), field_name, reason


class _Invalid(ValueError):
    """A value check failed; the caller adds file and field."""


@dataclass(frozen=True)
class Component:
    """A sampler or pruner: its type and its options (passed to Optuna's constructor)."""

    type: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    gpus: float = 0.0
    custom: dict[str, float] = field(default_factory=dict)  # Ray custom resources, e.g. a node label


@dataclass(frozen=True)
class Confirm:
    """The confirmation stage: the `top` best configurations of the search trained again with `seeds` fresh seeds
    each and evaluated on the test split (farm_sweep.sweep.confirmation)."""

    top: int
    seeds: int


@dataclass(frozen=True)
class Study:
    name: str
    path: Path
    search_space_path: Path | None
    space: SearchSpace
    trials: int
    seed: int = 0
    description: str = ""
    max_concurrent_trials: int | None = None
    sampler: Component = Component("tpe")
    pruner: Component = Component("median")
    resources: Resources = Resources()
    max_failures: int = 1
    enqueue: tuple[dict[str, Any], ...] = ()
    evaluation: dict[str, Any] = field(default_factory=dict)
    confirm: Confirm | None = None

    @property
    def epochs(self) -> int:
        """Epochs per trial when fixed (the pruners' maximum resource)."""
        return int(self.space.fixed.get("epochs", TrainConfig.epochs))


# ------------------------------------------------------------------ value checks


Check = Callable[[Any], Any]


def _integer(minimum: int, maximum: int | None = None) -> Check:
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Invalid(f"{quote(value)} must be an integer")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
            raise _Invalid(f"{value} must be {bound}")
        return value
    return check


def _number(minimum: float, maximum: float | None = None, exclusive: bool = False) -> Check:
    def check(value: Any) -> float:
        value = _as_float(value)
        if value < minimum or (exclusive and value == minimum) or (maximum is not None and value > maximum):
            low = f"> {minimum}" if exclusive else f">= {minimum}"
            raise _Invalid(f"{value} must be {low}" + (f" and <= {maximum}" if maximum is not None else ""))
        return value
    return check


def _as_float(value: Any) -> float:
    """A finite YAML number; numeric strings are accepted because YAML 1.1 reads `1e-3` (no dot) as a string."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Invalid(f"{quote(value)} must be a number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float's range
        number = math.inf
    except ValueError:
        raise _Invalid(f"{quote(value)} must be a number") from None
    if not math.isfinite(number):
        raise _Invalid(f"{quote(value)} must be a finite number, not infinity or NaN")
    return number


def _hinted(check: Check, fix: str) -> Check:
    """`check`, its message followed by `fix`."""
    def hinted(value: Any) -> Any:
        try:
            return check(value)
        except _Invalid as error:
            raise _Invalid(f"{error}; {fix}") from None
    return hinted


def _either(check: Check, literal: str) -> Check:
    def either(value: Any) -> Any:
        return value if value == literal else check(value)
    return either


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"{quote(value)} must be true or false")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"{quote(value)} must be a string")
    return value


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"expected a mapping (key: value entries), got {type(value).__name__} {quote(value)}")
    return value


_PRUNER_WINDOW = {"n_startup_trials": _integer(0), "n_warmup_steps": _integer(0),
                  "interval_steps": _integer(1), "n_min_trials": _integer(1)}
PRUNER_OPTIONS: dict[str, dict[str, Check]] = {
    "median": _PRUNER_WINDOW,
    "percentile": {"percentile": _number(0.0, 100.0), **_PRUNER_WINDOW},
    "successive_halving": {"min_resource": _either(_integer(1), "auto"), "reduction_factor": _integer(2),
                           "min_early_stopping_rate": _integer(0), "bootstrap_count": _integer(0)},
    "hyperband": {"min_resource": _integer(1), "max_resource": _either(_integer(1), "auto"),
                  "reduction_factor": _integer(2), "bootstrap_count": _integer(0)},
    "none": {},
}
SAMPLER_OPTIONS: dict[str, dict[str, Check]] = {
    "tpe": {"n_startup_trials": _integer(0), "multivariate": _boolean},
    "random": {},
    "grid": {},
}
REQUIRED_OPTIONS = {"percentile": ("percentile",)}
_FIELD_CHECKS: dict[str, Check] = {"seed": _integer(0, MAX_SEED)}  # TrainConfig ranges it leaves to the data loader


# ------------------------------------------------------------------ reading


class _Reader:
    """Checks the keys and values of one YAML file, raising StudyError(file, field, reason)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        """The file's top-level mapping (read within farm_sweep.untrusted's bounds; its content is never quoted:
        a search_space that names another kind of file must not print it)."""
        try:
            document = load_yaml(read_text(self.path))
        except InputError as error:
            raise StudyError(self.path, "(file)", str(error)) from None
        if document is None:
            raise StudyError(self.path, "(file)", "the file is empty; write the keys docs/studies.md describes")
        if not isinstance(document, dict):
            raise StudyError(self.path, "(top level)", f"expected a mapping (key: value entries), got "
                             f"{type(document).__name__}; write the keys docs/studies.md describes")
        return document

    def check(self, where: str, value: Any, check: Check) -> Any:
        try:
            return check(value)
        except _Invalid as error:
            raise StudyError(self.path, where, str(error)) from None

    def keys(self, where: str, mapping: dict[str, Any], allowed: typing.Iterable[str],
             required: typing.Iterable[str] = ()) -> None:
        allowed = list(allowed)
        for key in mapping:
            if key not in allowed:
                close = difflib.get_close_matches(str(key)[:100], allowed, n=1)
                guess = f"did you mean {close[0]!r}? " if close else ""
                raise StudyError(self.path, _join(where, str(key)[:QUOTE_CHARS]),
                                 f"unknown key; {guess}allowed here: {', '.join(allowed) or 'none'}")
        for key in required:
            if key not in mapping:
                raise StudyError(self.path, _join(where, key), "required key is missing; add it")

    def component(self, where: str, value: Any, options: dict[str, dict[str, Check]], default: str) -> Component:
        """`{type: NAME, option: value, ...}` (or just `NAME`) for a sampler or pruner."""
        if isinstance(value, str):
            value = {"type": value}
        value = self.check(where, value, _mapping)
        kind = value.get("type", default)
        if not isinstance(kind, str) or kind not in options:
            raise StudyError(self.path, f"{where}.type", f"{quote(kind)} is not known; choose one of "
                             f"{', '.join(options)}")
        self.keys(where, value, ["type", *options[kind]], REQUIRED_OPTIONS.get(kind, ()))
        checked = {key: self.check(f"{where}.{key}", v, options[kind][key]) for key, v in value.items()
                   if key != "type"}
        return Component(kind, checked)


def _join(where: str, key: str) -> str:
    """`where.key`, or just `key` at a file's top level (where is "" or "(top level)")."""
    return f"{where}.{key}" if where and not where.startswith("(") else key


STUDY_KEYS = ("name", "description", "search_space", "fixed", "trials", "max_concurrent_trials", "seed",
              "sampler", "pruner", "resources", "max_failures", "enqueue", "evaluation", "confirm")
CONFIRM_KEYS = ("top", "seeds")
SPACE_KEYS = ("parameters",)
PARAMETER_KEYS = ("distribution", "choices", "low", "high", "step", "when")
_CONFIG_FIELDS = {f.name for f in fields(TrainConfig)}


def load_study(path: str | Path, *, runs_here: bool = False) -> Study:
    """Read and validate a study file and its search space; raises StudyError, writes nothing.

    runs_here: the trials will run on this machine (an embedded Ray), so `device: cuda` needs a CUDA GPU here.
    """
    path = Path(path)
    reader = _Reader(path)
    document = reader.load()
    reader.keys("(top level)", document, STUDY_KEYS, ("name", "search_space"))
    name = reader.check("name", document["name"], _text)
    if not is_plain_name(name):
        raise StudyError(path, "name", f"{quote(name)} must be letters, digits, '_', '-', '.', at most "
                         f"{MAX_NAME_LENGTH} characters (it names folders)")
    space_path, space = _load_space(reader, document["search_space"])
    study_fixed = _fixed(reader, document.get("fixed", {}), space)
    space_field = "parameters" if space_path else "search_space.parameters"
    origins = {name: (space_path or path, f"{space_field}.{name}")
               for name in [*space.fixed, *(p.name for p in space.parameters)]}
    origins |= {name: (path, f"fixed.{name}") for name in study_fixed}
    space = SearchSpace(space.parameters, {**space.fixed, **study_fixed})
    sampler = reader.component("sampler", document.get("sampler", "tpe"), SAMPLER_OPTIONS, "tpe")
    trials = _trials(reader, document.get("trials"), sampler, space)
    study = Study(
        name=name, path=path, search_space_path=space_path, space=space, trials=trials,
        seed=reader.check("seed", document.get("seed", 0), _integer(0, MAX_SEED)),
        description=reader.check("description", document.get("description", ""), _text),
        max_concurrent_trials=_optional(reader, "max_concurrent_trials", document, _integer(1)),
        sampler=sampler,
        pruner=reader.component("pruner", document.get("pruner", "median"), PRUNER_OPTIONS, "median"),
        resources=_resources(reader, document.get("resources", {})),
        max_failures=reader.check("max_failures", document.get("max_failures", 1), _integer(0)),
        enqueue=_enqueue(reader, document.get("enqueue", []), space),
        evaluation=_evaluation(reader, document.get("evaluation")),
        confirm=_confirm(reader, document.get("confirm"), trials),
    )
    origins["evaluation"] = (path, "evaluation")  # the memory check may blame the evaluation batch
    _check_configurations(study, lambda name: origins.get(name, (path, f"fixed.{name}")), runs_here)
    return study


def _optional(reader: _Reader, key: str, document: dict[str, Any], check: Check) -> Any:
    value = document.get(key)
    return None if value is None else reader.check(key, value, check)


def _load_space(study_reader: _Reader, value: Any) -> tuple[Path | None, SearchSpace]:
    """`search_space:` is a path (relative to the study file) or an inline mapping."""
    if isinstance(value, str):
        space_path = study_reader.path.parent / value
        if not _exists(space_path):
            raise StudyError(study_reader.path, "search_space", f"file {quote(str(space_path), 300)} does not "
                             "exist; give a search-space file's path relative to the study file, or the space inline")
        space_path = space_path.resolve()
        reader = _Reader(space_path)
        return space_path, _space(reader, reader.load(), "")
    document = study_reader.check("search_space", value, _mapping)
    return None, _space(study_reader, document, "search_space")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long for the file system
        return False


def _space(reader: _Reader, document: dict[str, Any], where: str) -> SearchSpace:
    reader.keys(where or "(top level)", document, SPACE_KEYS, SPACE_KEYS)
    entries = reader.check(_join(where, "parameters"), document["parameters"], _mapping)
    parameters: list[Parameter] = []
    fixed: dict[str, Any] = {}
    for name, entry in entries.items():
        at = _join(where, f"parameters.{name}")
        if name not in _CONFIG_FIELDS:
            raise StudyError(reader.path, at, f"not a training parameter; known: {', '.join(sorted(_CONFIG_FIELDS))}")
        if isinstance(entry, dict):
            parameters.append(_parameter(reader, at, name, entry, parameters, fixed))
        else:
            fixed[name] = _config_value(reader, at, name, entry)
    return SearchSpace(tuple(parameters), fixed)


def _parameter(reader: _Reader, at: str, name: str, entry: dict[str, Any], earlier: list[Parameter],
               fixed: dict[str, Any]) -> Parameter:
    reader.keys(at, entry, PARAMETER_KEYS, ("distribution",))
    kind = entry["distribution"]
    if kind not in DISTRIBUTIONS:
        raise StudyError(reader.path, f"{at}.distribution", f"{quote(kind)} is not known; choose one of "
                         f"{', '.join(DISTRIBUTIONS)}")
    when = _condition(reader, f"{at}.when", entry.get("when", {}), earlier, fixed)
    if kind == "categorical":
        reader.keys(at, entry, ("distribution", "choices", "when"), ("choices",))
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            raise StudyError(reader.path, f"{at}.choices", "must be a non-empty list")
        values = tuple(_config_value(reader, f"{at}.choices[{i}]", name, c) for i, c in enumerate(choices))
        if len(set(map(repr, values))) < len(values):
            raise StudyError(reader.path, f"{at}.choices", "lists a value twice")
        return Parameter(name, kind, choices=values, when=when)
    reader.keys(at, entry, ("distribution", "low", "high", "step", "when"), ("low", "high"))
    check = _integer(-2**61, 2**61) if kind == "int" else _number(float("-inf"))
    low, high = (reader.check(f"{at}.{key}", entry[key], check) for key in ("low", "high"))
    step = entry.get("step")
    if step is not None:
        step = reader.check(f"{at}.step", step, _integer(1) if kind == "int" else _number(0.0, exclusive=True))
    if not low < high:
        raise StudyError(reader.path, at, f"low ({low}) must be below high ({high})")
    if kind == "log_float" and (low <= 0 or step is not None):
        raise StudyError(reader.path, at, "log_float needs low > 0 and no step")
    for key, bound in (("low", low), ("high", high)):
        _config_value(reader, f"{at}.{key}", name, bound)
    return Parameter(name, kind, low=low, high=high, step=step, when=when)


def _condition(reader: _Reader, at: str, value: Any, earlier: list[Parameter],
               fixed: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """`when: {parameter: [values]}`; each parameter must be an earlier categorical or a fixed value."""
    value = reader.check(at, value, _mapping)
    known = {p.name: p for p in earlier if p.distribution == "categorical"}
    condition = {}
    for name, allowed in value.items():
        if name not in known and name not in fixed:
            raise StudyError(reader.path, f"{at}.{name}", "must name a categorical parameter defined above "
                             f"this one (or a fixed one); known: {', '.join(known) or 'none'}")
        allowed = allowed if isinstance(allowed, list) else [allowed]
        possible = known[name].choices if name in known else (fixed[name],)
        for option in allowed:
            if name in known and option not in possible:
                raise StudyError(reader.path, f"{at}.{name}", f"{quote(option)} is not one of its choices "
                                 f"{quote(list(possible))}")
        condition[name] = tuple(allowed)
    return condition


def _config_value(reader: _Reader, at: str, name: str, value: Any) -> Any:
    """A value for TrainConfig field `name`: floats may be YAML numeric strings; lists stay lists; a dataset
    spec's mapping comes back checked, its path made absolute from the folder of the file that holds it."""
    if name == "dataset" and isinstance(value, dict):
        try:
            return DatasetSpec.from_value(value, reader.path.parent).to_dict()
        except DataError as error:
            raise StudyError(reader.path, at, str(error)) from None
    if name in _FIELD_CHECKS:
        return reader.check(at, value, _FIELD_CHECKS[name])
    hint = typing.get_type_hints(TrainConfig)[name]
    if hint is float:
        return reader.check(at, value, _number(float("-inf")))
    return value


def _fixed(reader: _Reader, value: Any, space: SearchSpace) -> dict[str, Any]:
    fixed = reader.check("fixed", value, _mapping)
    sampled = {p.name for p in space.parameters}
    for name in fixed:
        if name not in _CONFIG_FIELDS:
            raise StudyError(reader.path, f"fixed.{name}", f"not a training parameter; known: "
                             f"{', '.join(sorted(_CONFIG_FIELDS))}")
        if name in sampled:
            raise StudyError(reader.path, f"fixed.{name}", "is sampled by the search space; fix it there or "
                             "remove it from one of the two")
    return {name: _config_value(reader, f"fixed.{name}", name, v) for name, v in fixed.items()}


def _trials(reader: _Reader, value: Any, sampler: Component, space: SearchSpace) -> int:
    if sampler.type != "grid":
        if value is None:
            raise StudyError(reader.path, "trials", "required key is missing (the number of trials to run)")
        return reader.check("trials", value, _integer(1))
    for parameter in space.parameters:
        if parameter.grid_values() is None or parameter.when:
            raise StudyError(reader.path, "sampler.type", f"grid needs discrete, unconditional parameters; "
                             f"{parameter.name} is {parameter.distribution}"
                             + (" with a condition" if parameter.when else "") + "; use sampler tpe or random")
    size = space.grid_size()
    if size > MAX_GRID_SIZE:
        raise StudyError(reader.path, "sampler.type", f"the grid has {size} configurations, more than "
                         f"{MAX_GRID_SIZE}; narrow the int ranges (or give them a step), or use sampler tpe")
    trials = size if value is None else reader.check("trials", value, _integer(1, size))
    return trials


def _resources(reader: _Reader, value: Any) -> Resources:
    value = reader.check("resources", value, _mapping)
    reader.keys("resources", value, ("cpus", "gpus", "custom"))
    custom = reader.check("resources.custom", value.get("custom", {}), _mapping)
    return Resources(cpus=reader.check("resources.cpus", value.get("cpus", 1), _number(0.0, exclusive=True)),
                     gpus=reader.check("resources.gpus", value.get("gpus", 0), _number(0.0)),
                     custom={str(name): reader.check(f"resources.custom.{name}", amount, _number(0.0, exclusive=True))
                             for name, amount in custom.items()})


def _enqueue(reader: _Reader, value: Any, space: SearchSpace) -> tuple[dict[str, Any], ...]:
    """Configurations evaluated first (baselines, known-good points): values of sampled parameters."""
    if not isinstance(value, list):
        raise StudyError(reader.path, "enqueue", "must be a list of mappings {parameter: value}")
    by_name = {p.name: p for p in space.parameters}
    points = []
    for index, point in enumerate(value):
        at = f"enqueue[{index}]"
        point = reader.check(at, point, _mapping)
        reader.keys(at, point, by_name)
        for name, chosen in point.items():
            parameter = by_name[name]
            chosen = _config_value(reader, f"{at}.{name}", name, chosen)
            if not _within(parameter, chosen):
                raise StudyError(reader.path, f"{at}.{name}", f"{quote(chosen)} is outside its distribution "
                                 f"({parameter.describe()})")
            point[name] = chosen
        points.append(point)
    return tuple(points)


def _within(parameter: Parameter, value: Any) -> bool:
    if parameter.distribution == "categorical":
        return value in parameter.choices
    return isinstance(value, int | float) and not isinstance(value, bool) and parameter.low <= value <= parameter.high


def _evaluation(reader: _Reader, value: Any) -> dict[str, Any]:
    """Passed through to farm_sweep.evaluation.end_of_trial, which validates it (when a study asks for it)."""
    settings = {} if value is None else reader.check("evaluation", value, _mapping)
    if not settings:
        return {}
    try:
        from farm_sweep.evaluation.end_of_trial import validate_settings
    except ImportError as error:
        raise StudyError(reader.path, "evaluation", f"the evaluation code cannot be imported ({error}); "
                         "leave evaluation empty to run without it") from error
    try:
        validate_settings(settings)
    except ValueError as error:
        raise StudyError(reader.path, "evaluation", str(error)) from error
    return settings


def _confirm(reader: _Reader, value: Any, trials: int) -> Confirm | None:
    """`confirm: {top: K, seeds: N}`, or nothing (no confirmation stage)."""
    if value is None:
        return None
    value = reader.check("confirm", value, _mapping)
    reader.keys("confirm", value, CONFIRM_KEYS, CONFIRM_KEYS)
    top = _hinted(_integer(1, trials), f"confirm at most as many configurations as the study has trials ({trials})")
    seeds = _hinted(_integer(2, MAX_CONFIRM_SEEDS), "a standard deviation over seeds needs two or more, and "
                    f"{MAX_CONFIRM_SEEDS} are plenty")
    return Confirm(top=reader.check("confirm.top", value["top"], top),
                   seeds=reader.check("confirm.seeds", value["seeds"], seeds))


# ------------------------------------------------------------------ whole-configuration checks


Locate = Callable[[str], tuple[Path, str]]


def _check_configurations(study: Study, locate: Locate, runs_here: bool) -> None:
    """Every corner configuration (and every enqueued point) builds a TrainConfig, its data is present and
    intact, (for MADE) its orderings exist on the dataset's image size, its memory need fits this machine
    (runs_here) or a trial's ceiling (a cluster), and (runs_here) its device exists."""
    shapes: dict[tuple[Any, ...], tuple[int, int, int]] = {}
    evaluation_batch = _evaluation_batch(study.evaluation)
    memory_limit = None if runs_here else preflight.MEMORY_CEILING
    for values in _configurations(study):
        config = _train_config(values, locate)
        try:
            preflight.check(config, shapes, evaluation_batch=evaluation_batch, memory_limit=memory_limit)
        except preflight.PreflightError as error:
            raise StudyError(*locate(error.field), error.reason) from error
        if runs_here and config.device == "cuda" and not torch.cuda.is_available():
            raise StudyError(*locate("device"), "'cuda' requested but this machine has no CUDA GPU; use device: "
                             "auto (the GPU when there is one, else the CPU) or cpu, or run on a GPU cluster "
                             "(--address)")


def _evaluation_batch(settings: dict[str, Any]) -> int:
    if not settings:
        return 0
    from farm_sweep.evaluation.end_of_trial import largest_batch  # imported by _evaluation already

    return largest_batch(settings)


def _configurations(study: Study) -> Iterator[dict[str, Any]]:
    corners = itertools.islice(study.space.combinations(), MAX_CHECKED_COMBINATIONS)
    return itertools.chain(corners, ({**study.space.fixed, **point} for point in study.enqueue))


def _train_config(values: dict[str, Any], locate: Locate) -> TrainConfig:
    try:
        return TrainConfig.from_dict(values)
    except ConfigError as error:
        name = str(error).split(":", 1)[0]
        raise StudyError(*locate(name), f"{error} (in the configuration {quote(values, 400)})") from error
