"""A study's objectives: the metrics it may optimise, and their directions in Optuna's and Tune's words.

An objective's metric is a value every trial reports at its end: one of the epoch's own (`nll_image`, validation
nats per image; `train_loss`; `seconds`, the last epoch's training and validation time) or one of the end-of-trial
evaluation's (`inpaint/<case>/<fill>/<metric>`, `sampling/<sampler>/<knob>/<field>`: farm_sweep.evaluation.
end_of_trial), which needs that section of the study's evaluation. A sampler and knob exist per model (the
multi-order knobs go up to the trial's k), so whether a trial measured one is known when it ends: a trial that
did not report every objective is failed in Optuna (farm_sweep.sweep.pruning) and stays off the Pareto front.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from farm_sweep.speed_quality import CURVE_FIELDS
from farm_sweep.untrusted import quote

EPOCH_METRICS = ("nll_image", "train_loss", "seconds")
DIRECTIONS = {"minimize": "min", "maximize": "max"}  # Optuna's word: Tune's
CURVE_METRICS = tuple(name for name in CURVE_FIELDS if name not in ("sampler", "knob"))
DEFAULT_METRIC, DEFAULT_DIRECTION = "nll_image", "minimize"


def metric_problem(metric: str, sections: Mapping[str, Any]) -> str | None:
    """Why a study whose evaluation has `sections` (farm_sweep.evaluation.settings.validate_settings's, {}
    without one) cannot optimise `metric`, with the fix; None when it can."""
    family, *parts = metric.split("/")
    if not parts:
        return None if metric in EPOCH_METRICS else (
            f"{quote(metric)} is not a metric every trial reports; use one of {', '.join(EPOCH_METRICS)}, or an "
            "evaluation metric inpaint/<case>/<fill>/<metric> or sampling/<sampler>/<knob>/<field>")
    if family not in ("inpaint", "sampling") or len(parts) != 3:
        return (f"{quote(metric)} is not an evaluation metric; write inpaint/<case>/<fill>/<metric> or "
                "sampling/<sampler>/<knob>/<field> (docs/studies.md, Objectives)")
    section = sections.get(family)
    if section is None:
        return (f"{quote(metric)} comes from the end-of-trial evaluation's {family} section, which this study does "
                f"not run; add evaluation.{family} (docs/studies.md, Evaluation settings)")
    if family == "sampling":
        return None if parts[2] in CURVE_METRICS else (
            f"{quote(metric)}: the speed-quality curve has no field {quote(parts[2])}; use one of "
            f"{', '.join(CURVE_METRICS)}")
    case, fill, _ = parts
    if case not in section["cases"] or fill not in section["fills"]:
        return (f"{quote(metric)}: the study's inpainting runs cases {', '.join(section['cases'])} and fills "
                f"{', '.join(section['fills'])}; name one of each, or add yours to evaluation.inpaint")
    return None


def tune_modes(directions: Sequence[str]) -> list[str]:
    """Tune's modes (`min`, `max`) for Optuna's directions."""
    return [DIRECTIONS[direction] for direction in directions]
