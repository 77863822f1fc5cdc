"""Property: whatever a study or search-space file holds, load_study returns a Study or raises StudyError whose
message starts with the file's path; never another exception (which the command would print as a traceback)."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from farm_sweep.data import DATASETS
from farm_sweep.losses import DIVERGENCES, LOSSES
from farm_sweep.made.network import WEIGHT_SHARING
from farm_sweep.orderings import FAMILIES
from farm_sweep.sweep.search_space import DISTRIBUTIONS, SAMPLERS
from farm_sweep.sweep.study import PRUNER_OPTIONS, STUDY_KEYS, StudyError, load_study
from farm_sweep.training.config import MODELS, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FARM_DATA_DIR") or ROOT.parent / "shared" / "data").resolve()
FIELDS = [f.name for f in fields(TrainConfig)]
GOOD_SPACE = {"parameters": {"lr": {"distribution": "log_float", "low": 1.0e-3, "high": 1.0e-2}}}
EXAMPLES = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ------------------------------------------------------------------ strategies

words = st.sampled_from(sorted({*DATASETS, *MODELS, *FAMILIES, *LOSSES, *DIVERGENCES, *WEIGHT_SHARING, *SAMPLERS,
                                *PRUNER_OPTIONS, *DISTRIBUTIONS, "static", "dynamic", "auto", "cpu", "cuda",
                                "bogus", "1e-3", "inf", "nan", ""}))
numbers = st.integers(-3, 12) | st.integers() | st.floats() | st.sampled_from([1.0e-3, 0.5, 2**32, 2**62, 10**30])
scalars = st.none() | st.booleans() | numbers | words | st.text(max_size=12)
keys = st.sampled_from([*STUDY_KEYS, *FIELDS, "parameters", "distribution", "choices", "low", "high", "step",
                        "when", "type", "cpus", "gpus"]) | st.text(max_size=8) | st.integers(-2, 2)
trees = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
                     max_leaves=10)


def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` three times in four, a random tree otherwise (so examples get past the first checks)."""
    return st.integers(0, 3).flatmap(lambda n: trees if n == 0 else good)


def plausible(name: str) -> st.SearchStrategy[Any]:
    """Values of TrainConfig field `name`'s type (str, int, float, sizes, optional), right or wrong."""
    default = getattr(TrainConfig(), name, None)
    kinds = {str: words, int: st.integers(-1, 9), float: st.floats(-1.0, 10.0) | words,
             tuple: st.lists(st.integers(0, 32), max_size=2)}
    return kinds.get(type(default), st.none() | st.sampled_from([str(SHARED_DATA), "/nowhere", 0]))


field_names = st.sampled_from([*FIELDS, "bogus"])
configurations = st.lists(field_names.flatmap(lambda name: st.tuples(st.just(name), mostly(plausible(name)))),
                          max_size=4).map(dict)


@st.composite
def parameter_entries(draw: st.DrawFn, name: str) -> dict[str, Any]:
    distribution = draw(mostly(st.sampled_from([*DISTRIBUTIONS, "gaussian"])))
    values = mostly(plausible(name))
    entry = {"distribution": distribution, "choices": draw(mostly(st.lists(values, max_size=3))),
             "low": draw(values), "high": draw(values), "step": draw(mostly(numbers)), "when": draw(mostly(
                 st.dictionaries(field_names, st.lists(words, max_size=2), max_size=1)))}
    chosen = draw(st.sets(st.sampled_from(list(entry)), max_size=3))
    return {key: value for key, value in entry.items() if key == "distribution" or key in chosen}


parameters = st.lists(field_names.flatmap(lambda name: st.tuples(st.just(name), parameter_entries(name)
                                                                  | mostly(plausible(name)))), max_size=4).map(dict)
spaces = mostly(st.fixed_dictionaries({"parameters": parameters}))
options = mostly(words | numbers)
components = st.sampled_from([*SAMPLERS, *PRUNER_OPTIONS]) | st.fixed_dictionaries(
    {"type": mostly(words | st.lists(words, max_size=1))},
    optional={name: options for name in ("n_startup_trials", "n_warmup_steps", "percentile", "multivariate")})
BASE = {"name": "ok", "search_space": "space.yaml", "trials": 2, "fixed": {"dataset": "digits"}}
studies = st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["ok", "a/b", "", "x\n"]) | trees, "search_space": mostly(st.just("missing.yaml") | spaces),
    "fixed": mostly(configurations), "trials": mostly(numbers), "seed": mostly(numbers),
    "sampler": mostly(components), "pruner": mostly(components), "enqueue": mostly(st.lists(configurations,
                                                                                              max_size=2)),
    "resources": mostly(st.dictionaries(st.sampled_from(["cpus", "gpus", "custom"]), numbers, max_size=2)),
    "max_failures": mostly(numbers), "max_concurrent_trials": mostly(numbers),
    "evaluation": mostly(st.dictionaries(st.sampled_from(["inpaint", "sampling"]), trees, max_size=2)),
    "description": trees}).map(lambda changes: {**BASE, **changes})


def shipped_study(path: Path) -> dict[str, Any]:
    """A shipped study with its search space inline (the copy lives elsewhere, so no relative path)."""
    document = yaml.safe_load(path.read_text())
    if isinstance(document["search_space"], str):
        document["search_space"] = yaml.safe_load((path.parent / document["search_space"]).read_text())
    return document


SHIPPED = [shipped_study(path) for path in sorted((ROOT / "studies").rglob("*.yaml"))]


def paths(tree: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path (keys and list indices) of every value inside `tree`."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        yield (*prefix, key)
        yield from paths(value, (*prefix, key))


@st.composite
def perturbed_studies(draw: st.DrawFn) -> dict[str, Any]:
    """A shipped study with one to three values replaced by random ones, or removed."""
    document = copy.deepcopy(draw(st.sampled_from(SHIPPED)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(paths(document))))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(scalars | trees)
    return document


# ------------------------------------------------------------------ the property


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FARM_DATA_DIR", str(SHARED_DATA))  # real data: each file is read once, then cached
        yield tmp_path_factory.mktemp("properties")


def loads_or_explains(folder: Path, study: Any, space: Any = GOOD_SPACE) -> None:
    """Write the files (documents as YAML, bytes and text as they are) and load the study."""
    for name, content in (("study.yaml", study), ("space.yaml", space)):
        raw = content if isinstance(content, bytes | str) else yaml.safe_dump(content, allow_unicode=True)
        (folder / name).write_bytes(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass"))
    try:
        load_study(folder / "study.yaml")
        event("loads")
    except StudyError as error:
        event(f"{Path(error.file).name}: {error.field.split('.')[0].split('[')[0]}")
        assert Path(error.file).name in ("study.yaml", "space.yaml")
        assert str(error).startswith(f"{error.file}: "), str(error)


@EXAMPLES
@given(study=studies)
def test_random_study_documents(folder: Path, study: Any) -> None:
    loads_or_explains(folder, study)


@EXAMPLES
@given(space=spaces, study=st.sampled_from(SHIPPED))
def test_random_search_spaces(folder: Path, space: Any, study: dict[str, Any]) -> None:
    loads_or_explains(folder, {**study, "search_space": "space.yaml"}, space)


@EXAMPLES
@given(study=perturbed_studies())
def test_shipped_studies_with_perturbed_values(folder: Path, study: dict[str, Any]) -> None:
    loads_or_explains(folder, study)


@settings(EXAMPLES, max_examples=300)
@given(raw=st.binary(max_size=300) | st.text(max_size=300))
def test_random_bytes_and_text_as_the_file(folder: Path, raw: bytes | str) -> None:
    loads_or_explains(folder, raw)
