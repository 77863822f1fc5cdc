"""Study files and search-space files: their declared schema, loading and validation (docs/studies.md is the
reference; schemas/*.schema.json are generated from the models here).

`load_study(path)` reads a study YAML (farm_sweep.untrusted: a regular file within bounds, yaml's SafeLoader
refusing duplicate keys) and validates it against `StudyFile`, and the search-space file it names against
`SearchSpaceFile`: keys, types, bounds and the rules inside one value. Then one explicit step checks what the
documents alone cannot: conditions name parameters above them, nothing is both fixed and sampled, enqueued
points lie in their distributions, the grid's size and the confirmation against the trials, and every
configuration the space can produce is a valid TrainConfig whose data is present (checksums, format, shape),
whose orderings exist and whose memory fits. Any problem raises `StudyError` naming the file, the field, the
reason and the fix; nothing is written.
"""

from __future__ import annotations

import itertools
import json
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import torch
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic.fields import FieldInfo

from farm_sweep.declared import STRICT, Number, number, problem, rule
from farm_sweep.evaluation.settings import EvaluationSettings, largest_batch, validate_settings
from farm_sweep.sweep import objectives
from farm_sweep.sweep.search_space import Parameter, SearchSpace
from farm_sweep.training import preflight
from farm_sweep.training.config import MAX_SEED, ConfigError, TrainConfig, TrainConfigSchema
from farm_sweep.untrusted import MAX_NAME_LENGTH, PATH_CHARS, QUOTE_CHARS, InputError, load_yaml, quote, read_text

MAX_CHECKED_COMBINATIONS = 2000  # corner configurations checked against TrainConfig before a study starts
MAX_GRID_SIZE = 100_000  # the grid sampler lists every configuration up front
MAX_CONFIRM_SEEDS = 100  # seeds per configuration in the confirmation stage
MAX_INT_BOUND = 2**61  # an int distribution's bounds stay within Optuna's integers
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class StudyError(ValueError):
    """A study or search-space file that cannot run: the message names the file, the field and the reason."""

    def __init__(self, file: Path | str, field_name: str, reason: str) -> None:
        super().__init__(f"{file}: {field_name}: {reason}")
        self.file, self.field, self.reason = str(file), field_name, reason


# ------------------------------------------------------------------ training parameters as files give them


class _InFileOrder(BaseModel):
    """TrainConfig's fields, each optional, remembering the order the file gave them (parameters are sampled
    in it, and plans print it)."""

    model_config = STRICT
    _order: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, value: Any, handler: Callable[[Any], _InFileOrder]) -> _InFileOrder:
        model = handler(value)
        if isinstance(value, dict):
            model._order = tuple(key for key in value if key in model.model_fields_set)
        return model

    def given(self) -> dict[str, Any]:
        """The values given, in the file's order, as plain YAML values (lists; a dataset spec's mapping, its path
        made absolute)."""
        plain = self.model_dump(mode="json", include=set(self._order))
        return {name: plain[name] for name in self._order}


def _training_fields() -> dict[str, FieldInfo]:
    return dict(TrainConfigSchema.__pydantic_fields__)


TrainingValues = create_model(
    "TrainingValues", __base__=_InFileOrder, __doc__="TrainConfig fields and their values (docs/studies.md).",
    **{name: (info.annotation, info) for name, info in _training_fields().items()})


# ------------------------------------------------------------------ the search space


class _Distribution(BaseModel):
    model_config = STRICT

    when: Annotated[dict[str, Any], Field(description="sample it only when each named parameter (a categorical "
                                                      "above it, or a fixed one) took one of the listed values "
                                                      "{parameter: [values]}")] = {}

    def condition(self) -> dict[str, tuple[Any, ...]]:
        return {name: tuple(allowed if isinstance(allowed, list) else [allowed]) for name, allowed in self.when.items()}


class _Categorical(_Distribution):
    distribution: Literal["categorical"]

    @model_validator(mode="after")
    def _distinct(self) -> _Categorical:
        choices = self.choices
        if len({repr(choice) for choice in choices}) < len(choices):
            raise rule("choices", "lists a value twice; give each choice once")
        return self


class _Range(_Distribution):
    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        low, high = self.low, self.high
        if not low < high:
            raise rule("", f"low ({low}) must be below high ({high})")
        return self


class IntDistribution(_Range):
    distribution: Literal["int"]
    low: Annotated[int, Field(ge=-MAX_INT_BOUND, le=MAX_INT_BOUND)]
    high: Annotated[int, Field(ge=-MAX_INT_BOUND, le=MAX_INT_BOUND, description="inclusive")]
    step: Annotated[int, Field(ge=1)] | None = None


class FloatDistribution(_Range):
    distribution: Literal["float"]
    low: Number
    high: Number
    step: number(gt=0.0) | None = None


class LogFloatDistribution(_Range):
    distribution: Literal["log_float"]
    low: number(gt=0.0)
    high: Number


def _entry(name: str, info: FieldInfo) -> Any:
    """A search-space entry for TrainConfig field `name`: a distribution over its values (a mapping), or a
    plain value (fixed for every trial)."""
    value = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
    choices = create_model(f"{name}_choices", __base__=_Categorical, __doc__=f"choices of {name}",
                           choices=(Annotated[list[value], Field(min_length=1, description="distinct values")], ...))
    ranges = {int: [IntDistribution], float: [FloatDistribution, LogFloatDistribution]}.get(_number_type(info), [])
    distribution = Annotated[Union[choices, *ranges], Field(discriminator="distribution")]  # noqa: UP007
    return Annotated[Union[Annotated[distribution, Tag("distribution")], Annotated[value, Tag("value")]],  # noqa: UP007
                     Discriminator(_entry_kind), Field(description=info.description)]


def _entry_kind(entry: Any) -> str:
    """A mapping is a distribution; anything else a fixed value."""
    return "distribution" if isinstance(entry, dict | _Distribution) else "value"


def _number_type(info: FieldInfo) -> type | None:
    """int or float when the field holds such numbers (None allowed besides), else None."""
    union = typing.get_origin(info.annotation) in (Union, types.UnionType)
    members = typing.get_args(info.annotation) if union else (info.annotation,)
    kinds = {typing.get_args(kind)[0] if typing.get_origin(kind) is Annotated else kind  # Annotated[int, ...]: int
             for kind in members if kind is not type(None)}
    return next((kind for kind in (int, float) if kinds == {kind}), None)


Parameters = create_model(
    "Parameters", __base__=_InFileOrder,
    __doc__="TrainConfig fields, sampled in this order: a distribution, or a plain value (fixed for every trial)",
    **{name: (_entry(name, info), info.default) for name, info in _training_fields().items()})


class SearchSpaceFile(BaseModel):
    """A search-space file (search_spaces/*.yaml): TrainConfig fields and their distributions."""

    model_config = STRICT | ConfigDict(title="farm-sweep search space")

    parameters: Annotated[Parameters, Field(description="TrainConfig fields, sampled in this order: "
                                                        "{distribution: ...}, or a plain value (fixed)")]


# ------------------------------------------------------------------ samplers and pruners


def _with_type(default: str) -> Callable[[Any], Any]:
    """`NAME` read as `{type: NAME}`, and a mapping without `type` as one of type `default`."""
    def with_type(value: Any) -> Any:
        if isinstance(value, str):
            return {"type": value}
        return {"type": default, **value} if isinstance(value, dict) and "type" not in value else value
    return with_type


class _Options(BaseModel):
    model_config = STRICT | ConfigDict(frozen=True)

    def options(self) -> dict[str, Any]:
        """The options given (the rest keep Optuna's defaults)."""
        return self.model_dump(exclude_unset=True, exclude={"type"})


class TpeSampler(_Options):
    type: Literal["tpe"] = "tpe"
    n_startup_trials: Annotated[int, Field(ge=0, description="random trials before TPE takes over")] = 10
    multivariate: Annotated[bool, Field(description="model the parameters jointly")] = False


class RandomSampler(_Options):
    type: Literal["random"]


class GridSampler(_Options):
    """Every configuration once: all parameters categorical or int, no conditions."""

    type: Literal["grid"]


class Nsga2Sampler(_Options):
    """NSGA-II, the genetic algorithm for several objectives (one works too)."""

    type: Literal["nsga2"]
    population_size: Annotated[int, Field(ge=2, description="trials per generation")] = 50
    crossover_prob: Annotated[number(ge=0.0, le=1.0), Field(description="chance that a child is a crossover of "
                                                                         "two parents")] = 0.9
    swapping_prob: Annotated[number(ge=0.0, le=1.0), Field(description="chance that a crossover takes each "
                                                                        "parameter from the other parent")] = 0.5


class _Window(_Options):
    n_startup_trials: Annotated[int, Field(ge=0, description="completed trials before pruning starts")] = 5
    n_warmup_steps: Annotated[int, Field(ge=0, description="pruning starts at this epoch")] = 0
    interval_steps: Annotated[int, Field(ge=1, description="epochs between pruning checks")] = 1
    n_min_trials: Annotated[int, Field(ge=1, description="trials reporting an epoch before it is pruned")] = 1


class MedianPruner(_Window):
    type: Literal["median"] = "median"


class PercentilePruner(_Window):
    type: Literal["percentile"]
    percentile: Annotated[number(ge=0.0, le=100.0), Field(description="prune below this percentile")]


AutoOrEpochs = Annotated[Union[Annotated[Literal["auto"], Tag("auto")],  # noqa: UP007
                               Annotated[Annotated[int, Field(ge=1)], Tag("epochs")]],
                         Discriminator(lambda value: "auto" if value == "auto" else "epochs")]


class SuccessiveHalvingPruner(_Options):
    type: Literal["successive_halving"]
    min_resource: Annotated[AutoOrEpochs, Field(description="epochs before the first rung, or auto")] = "auto"
    reduction_factor: Annotated[int, Field(ge=2)] = 4
    min_early_stopping_rate: Annotated[int, Field(ge=0)] = 0
    bootstrap_count: Annotated[int, Field(ge=0)] = 0


class HyperbandPruner(_Options):
    type: Literal["hyperband"]
    min_resource: Annotated[int, Field(ge=1)] = 1
    max_resource: Annotated[AutoOrEpochs, Field(description="epochs at most (default: the study's "
                                                            "epochs)")] = "auto"
    reduction_factor: Annotated[int, Field(ge=2)] = 3
    bootstrap_count: Annotated[int, Field(ge=0)] = 0


class NoPruner(_Options):
    type: Literal["none"]


SAMPLER_OPTIONS: dict[str, type[_Options]] = {"tpe": TpeSampler, "random": RandomSampler, "grid": GridSampler,
                                             "nsga2": Nsga2Sampler}
PRUNER_OPTIONS: dict[str, type[_Options]] = {"median": MedianPruner, "percentile": PercentilePruner,
                                            "successive_halving": SuccessiveHalvingPruner,
                                            "hyperband": HyperbandPruner, "none": NoPruner}


def _component(kinds: dict[str, type[_Options]], default: str, description: str) -> Any:
    """A sampler or pruner: its name, or {type: NAME, option: value, ...}."""
    declared = Annotated[Union[tuple(kinds.values())], Field(discriminator="type")]  # noqa: UP007
    return Annotated[declared, BeforeValidator(_with_type(default), json_schema_input_type=Literal[*kinds] | declared),
                     Field(description=description)]


Sampler = _component(SAMPLER_OPTIONS, "tpe", "tpe, random, grid or nsga2, or {type: NAME, option: value, ...}")
Pruner = _component(PRUNER_OPTIONS, "median", "an Optuna pruner (its options by Optuna's names); the step is the "
                    "epoch")


# ------------------------------------------------------------------ the study file


class Resources(BaseModel):
    """Per trial."""

    model_config = STRICT | ConfigDict(frozen=True)

    cpus: Annotated[number(gt=0.0), Field(description="CPUs per trial")] = 1.0
    gpus: Annotated[number(ge=0.0), Field(description="GPUs per trial, fractional allowed; requested only when "
                                                     "the cluster has GPUs")] = 0.0
    custom: Annotated[dict[str, number(gt=0.0)],
                      Field(description="Ray custom resources by name: steer trials to the nodes started with "
                                        "--resources")] = {}


class Confirm(BaseModel):
    """The confirmation stage: the `top` best configurations of the search trained again with `seeds` fresh seeds
    each and evaluated on the test split (farm_sweep.sweep.confirmation)."""

    model_config = STRICT | ConfigDict(frozen=True)

    top: Annotated[int, Field(ge=1, description="how many of the best configurations (at most trials)")]
    seeds: Annotated[int, Field(ge=2, le=MAX_CONFIRM_SEEDS, description=(
        f"fresh seeds per configuration: a standard deviation over seeds needs two or more, and {MAX_CONFIRM_SEEDS} "
        "are plenty"))]


class Objective(BaseModel):
    """A metric every trial reports at its end, and which way is better (farm_sweep.sweep.objectives)."""

    model_config = STRICT | ConfigDict(frozen=True)

    metric: Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH, description=(
        f"{', '.join(objectives.EPOCH_METRICS)} (validation), or an evaluation metric "
        "inpaint/<case>/<fill>/<metric> or sampling/<sampler>/<knob>/<field>"))]
    direction: Annotated[Literal[*objectives.DIRECTIONS], Field(description="minimize or maximize")]


DEFAULT_OBJECTIVES = (Objective(metric=objectives.DEFAULT_METRIC, direction=objectives.DEFAULT_DIRECTION),)


class StudyFile(BaseModel):
    """A study file (studies/*.yaml): a search space and how to search it."""

    model_config = STRICT | ConfigDict(title="farm-sweep study")

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=MAX_NAME_LENGTH, description=(
        f"letters, digits, '_', '-', '.', at most {MAX_NAME_LENGTH} characters: it names the results folder, the "
        "Optuna study and the MLflow experiment"))]
    description: Annotated[str, Field(description="free text")] = ""
    search_space: Annotated[Union[Annotated[str, Tag("file")], Annotated[SearchSpaceFile, Tag("inline")]],  # noqa: UP007
                            Discriminator(lambda value: "file" if isinstance(value, str) else "inline"),
                            Field(description="a search-space file (relative to the study file) or the same "
                                              "content inline")]
    fixed: Annotated[TrainingValues, Field(description="TrainConfig fields fixed for every trial (over the search "
                                                       "space's fixed values; not a sampled one)")] = TrainingValues()
    trials: Annotated[Annotated[int, Field(ge=1)] | None, Field(description=(
        "number of trials; optional with the grid sampler (default: the grid's size, the maximum)"))] = None
    max_concurrent_trials: Annotated[Annotated[int, Field(ge=1)] | None, Field(description=(
        "at most this many trials at once (default: as many as resources allow)"))] = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED, description="the sampler's seed")] = 0
    sampler: Sampler = TpeSampler()
    pruner: Pruner = MedianPruner()
    resources: Annotated[Resources, Field(description="per trial: cpus, gpus, custom")] = Resources()
    max_failures: Annotated[int, Field(ge=0, description="retries of a failed trial, each from its latest "
                                                         "checkpoint")] = 1
    enqueue: Annotated[list[TrainingValues], Field(description="configurations run first (baselines, known-good "
                                                               "points): values of sampled parameters")] = []
    evaluation: Annotated[EvaluationSettings | None, Field(description="the end-of-trial evaluation (null or "
                                                                       "empty: none)")] = None
    confirm: Annotated[Confirm | None, Field(description="the confirmation stage after the search: {top, seeds} "
                                                         "(null: none)")] = None
    objectives: Annotated[list[Objective], Field(min_length=1, description=(
        "what the search optimises: [{metric, direction}, ...]; two or more search for the Pareto front "
        "(default: validation nll_image, minimized)"))] = list(DEFAULT_OBJECTIVES)

    @model_validator(mode="after")
    def _objectives_fit(self) -> StudyFile:
        metrics = [objective.metric for objective in self.objectives]
        repeated = next((metric for metric in metrics if metrics.count(metric) > 1), None)
        if repeated is not None:
            raise rule("objectives", f"{quote(repeated)} is listed twice; give each metric once")
        if len(metrics) == 1:
            if self.objectives[0] != DEFAULT_OBJECTIVES[0]:
                raise rule("objectives", f"a study of one objective minimizes validation {objectives.DEFAULT_METRIC} "
                           "(its pruner, best trial, confirmation and export rank by it); list two or more "
                           "objectives to search a Pareto front")
            return self
        if "pruner" in self.model_fields_set and self.pruner.type != "none":
            raise rule("pruner", f"{self.pruner.type} cannot prune a study of {len(metrics)} objectives (Optuna "
                       "prunes single-objective trials only); set pruner: none, or keep one objective")
        if self.confirm is not None:
            raise rule("confirm", "the confirmation stage ranks configurations by validation nll_image, one "
                       "objective; remove confirm, or keep one objective")
        return self


STUDY_KEYS = tuple(StudyFile.model_fields)
SCHEMAS: dict[str, type[BaseModel]] = {"study": StudyFile, "search_space": SearchSpaceFile}


def json_schema(kind: str) -> str:
    """The JSON Schema of a study file (`study`) or a search-space file (`search_space`), as the text of
    schemas/<kind>.schema.json."""
    schema = {"$schema": SCHEMA_DIALECT, **SCHEMAS[kind].model_json_schema()}
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------ the study


@dataclass(frozen=True)
class Component:
    """A sampler or pruner: its type and its options (passed to Optuna's constructor)."""

    type: str
    options: dict[str, Any] = field(default_factory=dict)


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
    objectives: tuple[Objective, ...] = DEFAULT_OBJECTIVES

    @property
    def several_objectives(self) -> bool:
        """Two or more objectives: a multi-objective search for the Pareto front."""
        return len(self.objectives) > 1

    @property
    def epochs(self) -> int:
        """Epochs per trial when fixed (the pruners' maximum resource)."""
        return int(self.space.fixed.get("epochs", TrainConfig.epochs))


Locate = Callable[[str], tuple[Path, str]]  # a TrainConfig field -> the file and field that set it


def load_study(path: str | Path, *, runs_here: bool = False) -> Study:
    """Read and validate a study file and its search space; raises StudyError, writes nothing.

    runs_here: the trials will run on this machine (an embedded Ray), so `device: cuda` needs a CUDA GPU here.
    """
    path = Path(path)
    document = _validated(StudyFile, path, _read(path))
    space_path, space_document = _search_space(path, document.search_space)
    parameters, space_fixed = _parameters(space_document.parameters)
    study_fixed = document.fixed.given()
    space_file, space_field = (space_path, "parameters") if space_path else (path, "search_space.parameters")
    origins = {name: (space_file, f"{space_field}.{name}") for name in [*space_fixed, *parameters]}
    origins |= {name: (path, f"fixed.{name}") for name in study_fixed}
    origins["evaluation"] = (path, "evaluation")  # the memory check may blame the evaluation batch
    space = SearchSpace(tuple(parameters.values()), {**space_fixed, **study_fixed})
    study = Study(
        name=document.name, path=path, search_space_path=space_path, space=space,
        trials=_trials(path, document, space), seed=document.seed, description=document.description,
        max_concurrent_trials=document.max_concurrent_trials,
        sampler=Component(document.sampler.type, document.sampler.options()),
        pruner=_pruner(document),
        resources=document.resources, max_failures=document.max_failures,
        enqueue=tuple(point.given() for point in document.enqueue),
        evaluation=document.evaluation.model_dump(exclude_unset=True) if document.evaluation else {},
        confirm=document.confirm, objectives=tuple(document.objectives))
    _cross_check(study, study_fixed, lambda name: origins.get(name, (path, f"fixed.{name}")), runs_here)
    return study


def _pruner(document: StudyFile) -> Component:
    """The study's pruner; none for several objectives, which Optuna cannot prune (a pruner given for them is
    refused by StudyFile)."""
    if len(document.objectives) > 1:
        return Component("none")
    return Component(document.pruner.type, document.pruner.options())


def _read(path: Path) -> dict[str, Any]:
    """The file's top-level mapping (read within farm_sweep.untrusted's bounds; its content is never quoted:
    a search_space that names another kind of file must not print it)."""
    try:
        document = load_yaml(read_text(path))
    except InputError as error:
        raise StudyError(path, "(file)", str(error)) from None
    if document is None:
        raise StudyError(path, "(file)", "the file is empty; write the keys docs/studies.md describes")
    if not isinstance(document, dict):
        raise StudyError(path, "(top level)", f"expected a mapping (key: value entries), got "
                         f"{type(document).__name__}; write the keys docs/studies.md describes")
    return document


def _validated(model: type[BaseModel], path: Path, document: dict[str, Any]) -> Any:
    """`document` as a `model`; a dataset spec's path starts at the file's folder."""
    try:
        return model.model_validate(document, context={"folder": path.parent})
    except ValidationError as error:
        field_name, reason = problem(error, model)
        raise StudyError(path, field_name or "(top level)", reason) from None


def _search_space(study_path: Path, value: str | SearchSpaceFile) -> tuple[Path | None, SearchSpaceFile]:
    """`search_space:` is a path (relative to the study file) or the space inline."""
    if not isinstance(value, str):
        return None, value
    space_path = study_path.parent / value
    if not _exists(space_path):
        raise StudyError(study_path, "search_space", f"file {quote(str(space_path), PATH_CHARS)} does not exist; "
                         "give a search-space file's path relative to the study file, or the space inline")
    if space_path.is_dir():
        raise StudyError(study_path, "search_space", f"{quote(str(space_path), PATH_CHARS)} is not a regular file (a "
                         "folder); give the path of a search-space file relative to the study file, or the space "
                         "inline")
    space_path = space_path.resolve()
    return space_path, _validated(SearchSpaceFile, space_path, _read(space_path))


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long for the file system
        return False


def _parameters(entries: _InFileOrder) -> tuple[dict[str, Parameter], dict[str, Any]]:
    """The sampled parameters, in file order, and the fixed values of a search space."""
    parameters: dict[str, Parameter] = {}
    fixed: dict[str, Any] = {}
    for name, plain in entries.given().items():
        entry = getattr(entries, name)
        if isinstance(entry, _Categorical):
            parameters[name] = Parameter(name, "categorical", choices=tuple(plain["choices"]), when=entry.condition())
        elif isinstance(entry, _Range):
            parameters[name] = Parameter(name, plain["distribution"], low=entry.low, high=entry.high,
                                         step=getattr(entry, "step", None), when=entry.condition())
        else:
            fixed[name] = plain
    return parameters, fixed


def _trials(path: Path, document: StudyFile, space: SearchSpace) -> int:
    if document.sampler.type != "grid":
        if document.trials is None:
            raise StudyError(path, "trials", "required key is missing (the number of trials to run); add it")
        return document.trials
    for parameter in space.parameters:
        if parameter.grid_values() is None or parameter.when:
            raise StudyError(path, "sampler.type", f"grid needs discrete, unconditional parameters; "
                             f"{parameter.name} is {parameter.distribution}"
                             + (" with a condition" if parameter.when else "") + "; use sampler tpe or random")
    size = space.grid_size()
    if size > MAX_GRID_SIZE:
        raise StudyError(path, "sampler.type", f"the grid has {size} configurations, more than {MAX_GRID_SIZE}; "
                         "narrow the int ranges (or give them a step), or use sampler tpe")
    if document.trials is not None and document.trials > size:
        raise StudyError(path, "trials", f"{document.trials} must be in 1..{size}, the grid's size")
    return document.trials or size


# ------------------------------------------------------------------ what the documents alone cannot say


def _cross_check(study: Study, study_fixed: dict[str, Any], locate: Locate, runs_here: bool) -> None:
    """The checks that span the files, the data, the orderings and this machine, after both files parsed."""
    _check_conditions(study.space, locate)
    sampled = {p.name: p for p in study.space.parameters}
    for name in study_fixed:
        if name in sampled:
            raise StudyError(study.path, f"fixed.{name}", "is sampled by the search space; fix it there or remove "
                             "it from one of the two")
    for index, point in enumerate(study.enqueue):
        for name, chosen in point.items():
            at = f"enqueue[{index}].{name}"
            if name not in sampled:
                raise StudyError(study.path, at, f"unknown key; allowed here: {', '.join(sampled) or 'none'} (the "
                                 "sampled parameters)")
            if not _within(sampled[name], chosen):
                raise StudyError(study.path, at, f"{quote(chosen)} is outside its distribution "
                                 f"({sampled[name].describe()})")
    if study.confirm and study.confirm.top > study.trials:
        raise StudyError(study.path, "confirm.top", f"{study.confirm.top} must be in 1..{study.trials}; confirm at "
                         f"most as many configurations as the study has trials ({study.trials})")
    _check_configurations(study, locate, runs_here)
    _check_objectives(study)


def _check_objectives(study: Study) -> None:
    """Each objective's metric is one a trial of this study reports (an evaluation metric needs its section;
    the evaluation settings passed _check_configurations)."""
    sections = validate_settings(study.evaluation) if study.evaluation else {}
    for index, objective in enumerate(study.objectives):
        reason = objectives.metric_problem(objective.metric, sections)
        if reason is not None:
            raise StudyError(study.path, f"objectives[{index}].metric", reason)


def _check_conditions(space: SearchSpace, locate: Locate) -> None:
    """A condition names a categorical parameter above its own (and lists values among its choices), or a
    fixed one."""
    for index, parameter in enumerate(space.parameters):
        known = {p.name: p for p in space.parameters[:index] if p.distribution == "categorical"}
        for other, allowed in parameter.when.items():
            file, at = locate(parameter.name)
            at = f"{at}.when.{other[:QUOTE_CHARS]}"
            if other not in known and other not in space.fixed:
                raise StudyError(file, at, "must name a categorical parameter defined above this one (or a fixed "
                                 f"one); known: {', '.join(known) or 'none'}")
            outside = [option for option in allowed if other in known and option not in known[other].choices]
            if outside:
                raise StudyError(file, at, f"{quote(outside[0])} is not one of its choices "
                                 f"{quote(list(known[other].choices))}")


def _within(parameter: Parameter, value: Any) -> bool:
    if parameter.distribution == "categorical":
        return value in parameter.choices
    return isinstance(value, int | float) and not isinstance(value, bool) and parameter.low <= value <= parameter.high


def _check_configurations(study: Study, locate: Locate, runs_here: bool) -> None:
    """Every corner configuration (and every enqueued point) builds a TrainConfig, its model has the evaluation
    asked for, its data is present and intact, (for MADE) its orderings exist on the dataset's image size, its
    memory need fits this machine (runs_here) or a trial's ceiling (a cluster), and (runs_here) its device
    exists."""
    shapes: dict[tuple[Any, ...], tuple[int, int, int]] = {}
    evaluation_batch = largest_batch(study.evaluation) if study.evaluation else 0
    memory_limit = None if runs_here else preflight.MEMORY_CEILING
    for values in _configurations(study):
        config = _train_config(values, locate)
        if study.evaluation:
            try:
                validate_settings(study.evaluation, config.model)
            except ValueError as error:
                field_name, _, reason = str(error).partition(": ")
                raise StudyError(study.path, field_name, reason) from None
        try:
            preflight.check(config, shapes, evaluation_batch=evaluation_batch, memory_limit=memory_limit)
        except preflight.PreflightError as error:
            raise StudyError(*locate(error.field), error.reason) from error
        if runs_here and config.device == "cuda" and not torch.cuda.is_available():
            raise StudyError(*locate("device"), "'cuda' requested but this machine has no CUDA GPU; use device: "
                             "auto (the GPU when there is one, else the CPU) or cpu, or run on a GPU cluster "
                             "(--address)")


def _configurations(study: Study) -> Iterator[dict[str, Any]]:
    corners = itertools.islice(study.space.combinations(), MAX_CHECKED_COMBINATIONS)
    return itertools.chain(corners, ({**study.space.fixed, **point} for point in study.enqueue))


def _train_config(values: dict[str, Any], locate: Locate) -> TrainConfig:
    try:
        return TrainConfig.from_dict(values)
    except ConfigError as error:
        name = str(error).split(":", 1)[0]
        raise StudyError(*locate(name), f"{error} (in the configuration {quote(values, 400)})") from error
