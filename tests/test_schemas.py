"""The declared schemas: schemas/*.schema.json are what the models generate; every shipped study and search space
names its schema and validates against it as an editor would (the `jsonschema` package); the schema and the loader
refuse the same wrong documents at the same place; docs/studies.md's tables of keys are the models'."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from farm_sweep.evaluation.settings import EvaluationSettings
from farm_sweep.sweep import runner
from farm_sweep.sweep.search_space import DISTRIBUTIONS
from farm_sweep.sweep.study import (
    PRUNER_OPTIONS,
    SAMPLER_OPTIONS,
    SCHEMAS,
    StudyError,
    StudyFile,
    TrainingValues,
    json_schema,
    load_study,
)
from farm_sweep.untrusted import load_yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_LINE = "# yaml-language-server: $schema="
SHIPPED = [(path, kind) for kind, folder in (("study", "studies"), ("search_space", "search_spaces"))
           for path in sorted((ROOT / folder).rglob("*.yaml"))]
SPACE = {"parameters": {"lr": {"distribution": "log_float", "low": 1.0e-3, "high": 1.0e-2},
                        "divergence": {"distribution": "categorical", "choices": ["none", "jsd"]}}}
STUDY = {"name": "tiny", "search_space": "space.yaml", "trials": 2, "fixed": {"dataset": "digits", "epochs": 1}}


@functools.cache
def validator(kind: str) -> Draft202012Validator:
    schema = json.loads((ROOT / "schemas" / f"{kind}.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.mark.parametrize("kind", SCHEMAS)
def test_the_committed_schema_is_what_the_models_generate(kind: str) -> None:
    committed = (ROOT / "schemas" / f"{kind}.schema.json").read_text()
    regenerate = f"python -m farm_sweep.run --print-schema {kind} > schemas/{kind}.schema.json"
    assert committed == json_schema(kind), f"schemas/{kind}.schema.json differs from the models; {regenerate}"


def test_print_schema_prints_the_committed_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.main(["--print-schema", "search_space"]) == 0
    assert capsys.readouterr().out == (ROOT / "schemas" / "search_space.schema.json").read_text()
    assert runner.main(["--print-schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "farm-sweep study"


@pytest.mark.parametrize(("path", "kind"), SHIPPED, ids=[str(path.relative_to(ROOT)) for path, _ in SHIPPED])
def test_every_shipped_file_names_its_schema_and_validates_against_it(path: Path, kind: str) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith(SCHEMA_LINE), f"{path}: the first line must be {SCHEMA_LINE}..."
    assert (path.parent / first[len(SCHEMA_LINE):]).resolve() == ROOT / "schemas" / f"{kind}.schema.json"
    error = best_match(validator(kind).iter_errors(load_yaml(path.read_text())))
    assert error is None, f"{path}: {list(error.absolute_path)}: {error.message}"


def as_path(field: str) -> list[str]:
    """`enqueue[0].lr` as ["enqueue", "0", "lr"]."""
    return re.findall(r"[^.\[\]]+", field)


@pytest.mark.parametrize(("study", "space", "field"), [
    ({"trails": 3}, SPACE, "trails"),
    ({"seed": "5"}, SPACE, "seed"),
    ({"seed": True}, SPACE, "seed"),
    ({"name": "../elsewhere"}, SPACE, "name"),
    ({"fixed": {"epochs": 1.5}}, SPACE, "fixed.epochs"),
    ({"fixed": {"hidden_sizes": 64}}, SPACE, "fixed.hidden_sizes"),
    ({"fixed": {"lr": True}}, SPACE, "fixed.lr"),
    ({"pruner": {"type": "median", "n_warmup_step": 1}}, SPACE, "pruner.n_warmup_step"),
    ({"sampler": "bayes"}, SPACE, "sampler.type"),
    ({"resources": {"gpus": -1}}, SPACE, "resources.gpus"),
    ({"confirm": {"top": 1, "seeds": 1}}, SPACE, "confirm.seeds"),
    ({"objectives": [{"metric": "nll_image", "direction": "down"}]}, SPACE, "objectives[0].direction"),
    ({"sampler": {"type": "nsga2", "crossover_prob": 2.0}}, SPACE, "sampler.crossover_prob"),
    ({"enqueue": [{"lr": "fast"}]}, SPACE, "enqueue[0].lr"),
    ({"evaluation": {"inpaint": {"cases": ["bogus"]}}}, SPACE, "evaluation.inpaint.cases[0]"),
    ({}, {"parameters": {"lr": {"distribution": "gaussian", "low": 0, "high": 1}}}, "parameters.lr.distribution"),
    ({}, {"parameters": {"lr": {"distribution": "log_float", "low": 0, "high": 1}}}, "parameters.lr.low"),
    ({}, {"parameters": {"epochs": "5"}}, "parameters.epochs"),
    ({}, {"parameters": {"num_masks": {"distribution": "float", "low": 1, "high": 2}}},
     "parameters.num_masks.distribution"),
    ({}, {"parameters": {"bogus": 1}}, "parameters.bogus"),
])
def test_the_schema_and_the_loader_refuse_the_same_documents_at_the_same_place(
        tmp_path: Path, study: dict[str, Any], space: dict[str, Any], field: str) -> None:
    documents = {"study": {**STUDY, **study}, "search_space": space}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(documents["study"]))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    with pytest.raises(StudyError) as caught:
        load_study(tmp_path / "study.yaml")
    assert caught.value.field == field, str(caught.value)
    kind = "search_space" if Path(caught.value.file).name == "space.yaml" else "study"
    error = best_match(validator(kind).iter_errors(documents[kind]))
    assert error is not None, f"the {kind} schema accepts what the loader refuses: {caught.value}"
    place = [str(step) for step in error.absolute_path]
    assert as_path(field)[:len(place)] == place, (place, str(caught.value))


def test_the_schema_and_the_loader_accept_the_same_good_documents(tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({**STUDY, "enqueue": [{"lr": 2.0e-3}], "pruner": "none"}))
    assert load_study(tmp_path / "study.yaml").trials == 2
    assert best_match(validator("search_space").iter_errors(SPACE)) is None
    assert best_match(validator("study").iter_errors(load_yaml((tmp_path / "study.yaml").read_text()))) is None


# ------------------------------------------------------------------ docs/studies.md


def docs_table(heading: str) -> list[list[str]]:
    """The cells of the first table after `heading` in docs/studies.md (header and separator left out)."""
    text = (ROOT / "docs" / "studies.md").read_text()
    lines = text[text.index(f"\n{heading}\n"):].splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def ticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", text))


def test_the_study_file_table_lists_every_key_and_which_are_required() -> None:
    rows = {ticked(key).pop(): kind for key, kind, _ in docs_table("## Study file (`studies/*.yaml`)")}
    assert set(rows) == set(StudyFile.model_fields)
    required = {name for name, info in StudyFile.model_fields.items() if info.is_required()}
    assert {name for name, kind in rows.items() if "required" in kind} == required


@pytest.mark.parametrize(("heading", "declared"), [("### Samplers", SAMPLER_OPTIONS), ("### Pruners", PRUNER_OPTIONS)])
def test_the_sampler_and_pruner_tables_list_every_option(heading: str, declared: dict[str, Any]) -> None:
    rows = {ticked(kind).pop(): ticked(options) for kind, options in docs_table(heading)}
    assert rows == {name: set(model.model_fields) - {"type"} for name, model in declared.items()}


def test_the_distribution_table_lists_every_distribution_and_its_keys() -> None:
    schema = json.loads(json_schema("search_space"))["$defs"]
    keys = {name: set(schema[f"{name.title().replace('_', '')}Distribution"]["properties"]) - {"distribution", "when"}
            for name in DISTRIBUTIONS if name != "categorical"}
    table = docs_table("## Search-space file (`search_spaces/*.yaml`)")
    rows = {ticked(kind).pop(): ticked(text) for kind, text in table}
    assert rows == {"categorical": {"choices"}, **keys}


def kind_of(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    """A JSON Schema as the docs' type column says it: `int >= 1`, `one of a, b`, `list of ...`, `... or null`."""
    if "$ref" in schema:
        definition = defs[schema["$ref"].split("/")[-1]]
        return "mapping {" + ", ".join(definition["properties"]) + "}"
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if alternatives:
        kinds = [kind_of(alternative, defs) for alternative in alternatives if alternative.get("type") != "null"]
        return " or ".join(kinds) + (" or null" if len(kinds) < len(alternatives) else "")
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    bounds = " and ".join(f"{symbol} {schema[key]}" for key, symbol in (
        ("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")) if key in schema)
    kind = {"integer": "int", "number": "number", "boolean": "true or false", "string": "string",
            "object": "mapping"}.get(schema.get("type"), "")
    if schema.get("type") == "array":
        items = schema["items"]
        kind = "list of " + ", ".join(items["enum"]) if "enum" in items else "list of " + kind_of(items, defs)
    return f"{kind} {bounds}".strip()


def generated_rows(schema: dict[str, Any], prefix: str = "") -> list[str]:
    """A model's table rows: | `key` | type | default | meaning |."""
    rows = []
    for name, field in schema["properties"].items():
        default = field.get("default", "required")
        text = default if isinstance(default, str) else json.dumps(default)
        rows.append(f"| `{prefix}{name}` | {kind_of(field, schema.get('$defs', {}))} | `{text}` | "
                    f"{field.get('description', '')} |")
    return rows


@pytest.mark.parametrize(("heading", "rows"), [
    ("## Training parameters", generated_rows(TrainingValues.model_json_schema())),
    ("## Evaluation settings", [row for section in ("inpaint", "sampling") for row in generated_rows(
        EvaluationSettings.model_json_schema()["$defs"][f"{section.title()}Settings"], f"{section}.")]),
])
def test_the_generated_tables_are_in_the_docs(heading: str, rows: list[str]) -> None:
    written = ["| " + " | ".join(cells) + " |" for cells in docs_table(heading)]
    assert written == rows, f"docs/studies.md {heading}: replace the table's rows with\n" + "\n".join(rows)
