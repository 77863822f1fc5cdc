"""Study-level figures (the speed-quality Pareto front across trials, the parameter importances) and the
one way every figure is saved."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the headless backend)

_SPEEDUP = re.compile(r"^sampling/(?P<sampler>[^/]+)/(?P<knob>[^/]+)/speedup$")


@dataclass(frozen=True)
class SpeedQualityPoint:
    trial_id: str
    sampler: str
    knob: str
    speedup: float
    classifier_score: float


def speed_quality_points(rows: Sequence[Mapping[str, Any]]) -> list[SpeedQualityPoint]:
    """Every (trial, sampler setting) with both a speed-up and a classifier score in its metrics."""
    points = []
    for row in rows:
        for key, value in row.items():
            match = _SPEEDUP.match(key)
            score = row.get(f"sampling/{match['sampler']}/{match['knob']}/classifier_score") if match else None
            if match and _finite(value) and _finite(score):
                points.append(SpeedQualityPoint(str(row["trial_id"]), match["sampler"], match["knob"],
                                                float(value), float(score)))
    return points


def pareto_front(points: Sequence[SpeedQualityPoint]) -> list[SpeedQualityPoint]:
    """Points no other point beats on both speed-up and classifier score (both: higher is better)."""
    def dominated(p: SpeedQualityPoint) -> bool:
        return any(q.speedup >= p.speedup and q.classifier_score >= p.classifier_score
                   and (q.speedup, q.classifier_score) != (p.speedup, p.classifier_score) for q in points)
    return sorted((p for p in points if not dominated(p)), key=lambda p: p.speedup)


def pareto_figure(points: Sequence[SpeedQualityPoint], path: Path) -> Path:
    front = pareto_front(points)
    figure, axes = plt.subplots(figsize=(6, 4))
    for sampler in sorted({p.sampler for p in points}):
        chosen = [p for p in points if p.sampler == sampler]
        axes.scatter([p.speedup for p in chosen], [p.classifier_score for p in chosen], label=sampler, alpha=0.6)
    axes.plot([p.speedup for p in front], [p.classifier_score for p in front], "k--*", markersize=10,
              label="Pareto front")
    for p in front:
        axes.annotate(f"{p.trial_id[-5:]} {p.knob}", (p.speedup, p.classifier_score), fontsize=7)
    axes.set_xscale("log")
    axes.set(xlabel="speed-up over sequential sampling", ylabel="classifier score",
             title="Speed-quality across trials")
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def importance_figure(importances: Mapping[str, float], path: Path) -> Path:
    names = list(importances)[::-1]
    figure, axes = plt.subplots(figsize=(6, 1.5 + 0.4 * len(names)))
    axes.barh(names, [importances[name] for name in names])
    axes.set(xlabel="importance for validation nll_image", title="Parameter importance (Optuna)")
    return save_figure(figure, path)


def save_figure(figure: plt.Figure, path: Path | str) -> Path:
    """Lay out, write as PNG (creating the folder) and close: every figure the project makes ends here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and value == value and abs(value) != float("inf")
