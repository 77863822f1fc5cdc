"""A study's `evaluation:` section, declared: what the end-of-trial evaluation runs (farm_sweep.evaluation.
end_of_trial; docs/studies.md, *Evaluation settings*). Every key is optional; a section set to null is skipped.

`validate_settings(settings, model)` checks a section as given and fills in the defaults: for `model` (a
trial's), or for any model (None: a study file is checked before its trials' models are known)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from farm_sweep import occlusions
from farm_sweep.data import SPLITS
from farm_sweep.declared import STRICT, problem
from farm_sweep.pixelcnn import inpaint as pixelcnn_inpaint
from farm_sweep.untrusted import quote

CASES = {"made": occlusions.CASES, "pixelcnn": pixelcnn_inpaint.CASES}  # the inpainting cases of each model
ALL_CASES = tuple(dict.fromkeys(case for cases in CASES.values() for case in cases))
PROTOCOLS = {"made": occlusions.PROTOCOLS, "pixelcnn": ("ours",)}
Count = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0)]


class InpaintSettings(BaseModel):
    model_config = STRICT

    cases: Annotated[Annotated[list[Literal[*ALL_CASES]], Field(min_length=1)] | None,
                     Field(description="occlusion cases (default: all of the model's; made: best, average, "
                                       "worst; pixelcnn: best, average, top_half)")] = None
    fills: Annotated[list[Literal[*occlusions.FILLS]], Field(min_length=1, description="fill plans")] = [
        "single", "evidence_weighted"]
    num_occlusions: Annotated[Count, Field(description="occlusions per case")] = 10
    images_per_occlusion: Annotated[Count, Field(description="images of a seeded subset each occlusion is "
                                                             "applied to")] = 10
    split: Annotated[Literal[*SPLITS], Field(description="the split inpainted (never choose hyperparameters on "
                                                         "test)")] = "valid"
    seed: Annotated[Seed, Field(description="the seed of occlusions and images")] = 0
    protocol: Annotated[Literal[*occlusions.PROTOCOLS], Field(description="ours, or paper: the FARM paper's "
                                                                          "occlusions and averaging (made "
                                                                          "only)")] = "ours"


class SamplingSettings(BaseModel):
    model_config = STRICT

    num_samples: Annotated[Count, Field(description="the samples each sampler setting's quality is scored "
                                                    "on")] = 100
    timed_samples: Annotated[Count, Field(description="the first of them, the batch each setting is timed on (11 "
                                                      "draws each)")] = 10
    seed: Annotated[Seed, Field(description="the seed of the samples")] = 0


class EvaluationSettings(BaseModel):
    """The end-of-trial evaluation: inpainting (null skips it) and the speed-quality curve (null skips it)."""

    model_config = STRICT

    inpaint: Annotated[InpaintSettings | None, Field(description="inpainting metrics and figure (null: "
                                                                 "none)")] = InpaintSettings()
    sampling: Annotated[SamplingSettings | None, Field(description="the speed-quality curve (null: "
                                                                   "none)")] = SamplingSettings()


def validate_settings(settings: dict[str, Any] | None,
                      model: str | None = None) -> dict[str, dict[str, Any] | None]:
    """Every section's settings with the defaults filled in, checked for `model` (None: for any model); None
    for a section set to null. ValueError `evaluation.FIELD: reason` for a setting that cannot work."""
    try:
        declared = EvaluationSettings.model_validate(settings or {})
    except ValidationError as error:
        field, reason = problem(error, EvaluationSettings)
        raise ValueError(f"evaluation.{field}: {reason}" if field else f"evaluation: {reason}") from None
    if model is not None and model not in CASES:
        raise ValueError(f"evaluation: no evaluation for model {model!r}; it exists for {', '.join(CASES)}")
    sections = declared.model_dump()
    inpaint = sections["inpaint"]
    if inpaint is not None:
        cases = CASES[model] if model else ALL_CASES
        inpaint["cases"] = inpaint["cases"] or list(cases)
        scope = f" (model {model})" if model else ""
        if any(case not in cases for case in inpaint["cases"]):
            raise ValueError(f"evaluation.inpaint.cases: {quote(inpaint['cases'])} must be a non-empty list drawn from "
                             f"{', '.join(cases)}{scope}")
        protocols = PROTOCOLS[model] if model else occlusions.PROTOCOLS
        if inpaint["protocol"] not in protocols:
            raise ValueError(f"evaluation.inpaint.protocol: {inpaint['protocol']!r} is not a protocol{scope}; "
                             f"choose one of {', '.join(protocols)}")
    return sections


def largest_batch(settings: dict[str, Any] | None) -> int:
    """The most images the evaluation pushes through the model at once (for the memory estimate)."""
    sections = validate_settings(settings)
    inpaint, sampling = sections["inpaint"] or {}, sections["sampling"] or {}
    return max(inpaint.get("images_per_occlusion", 0), sampling.get("num_samples", 0))
