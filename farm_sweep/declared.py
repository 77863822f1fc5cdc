"""Declared schemas: the strict value types the project's files are read with, and pydantic's validation errors
told in the project's words.

The study file, the search-space file, the training configuration and the evaluation settings are pydantic
models (farm_sweep.sweep.study, farm_sweep.training.config, farm_sweep.evaluation.settings) with
`STRICT`: a key the model does not declare is an error, and YAML's `"5"` is not an integer, `true` not 1, `1`
not a string. Numbers are the one exception YAML 1.1 forces: it reads `1e-3` (no dot) as a string, so `Number`
takes a numeric string (and refuses infinity and NaN). Bounds are declared on the fields (`Field(ge=1)`,
`number(ge=0.0)`), in the field's own type (`ge=0.0` on a number); a field's description is its JSON Schema
description and the explanation a message adds to a bound it breaks.

`problem(error, model)` is the one place a ValidationError becomes a message: the first error as (FIELD,
reason), FIELD the dotted path to the value (`fixed.hidden_sizes`, `enqueue[0].lr`), the reason quoting values
briefly (farm_sweep.untrusted.quote). A rule that spans fields raises `rule(field, reason)` from a model
validator, located at that field.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from farm_sweep.untrusted import QUOTE_CHARS, quote

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
UNKNOWN_KEY = ("extra_forbidden", "invalid_key", "unexpected_keyword_argument")
MAPPING_ERRORS = ("model_type", "model_attributes_type", "dict_type", "dataclass_type", "dataclass_args_type")


def _yaml_number(value: Any) -> Any:
    """A numeric string as its float (YAML 1.1's `1e-3`); anything else is left to the strict float check."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def number(**bounds: float) -> Any:
    """A finite number within `bounds` (ge, gt, le, lt); the bounds go before the string conversion, so they
    reach the JSON Schema (minimum, exclusiveMinimum, ...)."""
    return Annotated[float, Field(**bounds), BeforeValidator(_yaml_number)]


Number = number()


def rule(field: str, reason: str) -> Exception:
    """The error of a rule that spans fields, for a model validator to raise: located at `field`, or at the
    value validated when `field` is ""."""
    error = PydanticCustomError("rule", "{reason}", {"reason": reason})
    if not field:
        return error
    return ValidationError.from_exception_data("rule", [{"type": error, "loc": (field,), "input": None}])


def problem(error: ValidationError, model: Any) -> tuple[str, str]:
    """(FIELD, reason) of the first error `model` (the class that was validated) found, an unknown key before
    any other (a misspelt key is also a missing one); FIELD is "" for the document itself."""
    details = min(error.errors(include_url=False), key=lambda details: details["type"] not in UNKNOWN_KEY)
    place = _Place.of(model, details["loc"])
    if details["type"] in ("union_tag_invalid", "union_tag_not_found"):  # the key that names the member
        place.path = _join(place.path, str((details.get("ctx") or {}).get("discriminator", "")).strip("'"))
    return place.path, _reason(details, place)


class _Place:
    """Where an error's location leads in the declared types: its path as users write it, the type found there,
    the bounds and description declared on it, and the keys allowed beside it."""

    def __init__(self) -> None:
        self.path, self.kind, self.description = "", None, ""
        self.metadata: list[Any] = []
        self.allowed: tuple[str, ...] = ()

    @classmethod
    def of(cls, model: Any, loc: tuple[int | str, ...]) -> _Place:
        place = cls()
        place.kind = model
        for step in loc:
            place._enter(step)
        place._unwrap()
        return place

    def _unwrap(self) -> None:
        """Annotated (its metadata kept) and Optional peeled off, to the type underneath or to a union."""
        while True:
            if typing.get_origin(self.kind) is Annotated:
                self.kind, *more = typing.get_args(self.kind)
                self.metadata += more
            elif _is_union(self.kind) and len(members := _members(self.kind)) == 1:
                self.kind = members[0]
            else:
                return

    def _enter(self, step: int | str) -> None:
        self._unwrap()
        if _is_union(self.kind):  # a tagged union's location names the member it chose; users never write it
            self.kind = _member(self.kind, step)
            return
        fields = getattr(self.kind, "__pydantic_fields__", None)
        origin, args = typing.get_origin(self.kind), typing.get_args(self.kind)
        self.metadata, self.description = [], ""
        if isinstance(step, int) and origin in (list, tuple):
            self.path += f"[{step}]"
            self.kind = args[0] if args else None
            return
        self.path = _join(self.path, str(step)[:QUOTE_CHARS])
        if isinstance(fields, dict):  # a model: `step` is one of its fields, or a key it does not have
            self.allowed = tuple(fields)
            info = fields.get(step)
            self.kind = info.annotation if info else None
            self.metadata, self.description = (list(info.metadata), info.description or "") if info else ([], "")
        else:
            self.kind = args[1] if origin is dict and len(args) == 2 else None

    def bounds(self) -> dict[str, Any]:
        """The bounds declared on the value: {"ge": 1, "le": 8}, ...; a FieldInfo in Annotated holds its own."""
        items = [inner for item in self.metadata for inner in (getattr(item, "metadata", None) or [item])]
        return {_BOUNDS[type(item)]: getattr(item, _BOUNDS[type(item)]) for item in items if type(item) in _BOUNDS}


_BOUNDS = {annotated_types.Ge: "ge", annotated_types.Gt: "gt", annotated_types.Le: "le", annotated_types.Lt: "lt"}


def _is_union(kind: Any) -> bool:
    return typing.get_origin(kind) in (typing.Union, types.UnionType)


def _members(kind: Any) -> list[Any]:
    return [member for member in typing.get_args(kind) if member is not type(None)]


def _member(union: Any, tag: int | str) -> Any:
    """The member of a tagged union that `tag` names: by its Tag, or by the literal of its discriminating field."""
    for member in _members(union):
        metadata = typing.get_args(member)[1:] if typing.get_origin(member) is Annotated else ()
        if any(getattr(item, "tag", None) == tag for item in metadata):
            return member
        fields = getattr(member, "__pydantic_fields__", {})
        if any(tag in typing.get_args(info.annotation) for info in fields.values()
               if typing.get_origin(info.annotation) is Literal):
            return member
    return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _reason(details: ErrorDetails, place: _Place) -> str:
    kind, value, context = details["type"], details.get("input"), details.get("ctx") or {}
    if kind == "missing":
        return "required key is missing; add it"
    if kind in UNKNOWN_KEY:
        key = str(details["loc"][-1])[:100]
        close = difflib.get_close_matches(key, place.allowed, n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key; {guess}allowed here: {', '.join(place.allowed) or 'none'}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        choices = str(context.get("expected_tags", "")).replace("'", "")
        if kind == "union_tag_not_found":
            return f"required key is missing; add it (one of {choices})"
        return f"{quote(context.get('tag'))} is not known; choose one of {choices}"
    if kind in MAPPING_ERRORS:
        return f"expected a mapping (key: value entries), got {type(value).__name__}"
    if kind in ("list_type", "tuple_type"):
        return f"{quote(value)} has type {type(value).__name__}, expected {kind[:-5]} (a list: [a, b, ...])"
    if kind == "literal_error":
        choices = ", ".join(str(choice) for choice in typing.get_args(place.kind)) or context.get("expected")
        return f"{quote(value)} is not allowed; choose one of {choices}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        explained = f"; {place.description}" if place.description else ""
        return f"{quote(value)} must be {_bounds_text(place.bounds(), value)}{explained}"
    if kind in ("string_pattern_mismatch", "string_too_long"):
        return f"{quote(value)} must be {place.description}"
    simple = {"int_type": "an integer", "int_from_float": "an integer", "int_parsing": "an integer",
              "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
              "string_type": "a string", "finite_number": "a finite number, not infinity or NaN"}
    if kind in simple:
        return f"{quote(value)} must be {simple[kind]}"
    if kind == "too_short":
        return f"{quote(value)} must have at least {context.get('min_length')} item(s)"
    return details["msg"]  # the rules' and validators' own reasons, already in the project's words


def _bounds_text(bounds: dict[str, Any], value: Any) -> str:
    """`in 1..8`, `positive`, `an integer >= 1`, `>= 0.0 and < 1.0`: how the declared bounds read (an integer's
    bounds are declared as integers, a number's as floats)."""
    integer = isinstance(value, int) and all(isinstance(bound, int) for bound in bounds.values())
    if integer and "ge" in bounds and "le" in bounds:
        return f"in {bounds['ge']}..{bounds['le']}"
    if bounds.get("gt") == 0 and len(bounds) == 1:
        return "positive"
    texts = [f"{symbol} {bounds[name]}" for name, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
             if name in bounds]
    return ("an integer " if integer else "") + " and ".join(texts)
