"""The speed-quality curve of fast sampling (DESIGN 5), shared by every model family: its rows, timed by
the project's benchmark method (farm_sweep.timing), the scorer it needs, and its table and figure.

Columns: `network_evaluations` (single-ordering forwards of the scored batch, as each sampler counts them),
`wall_seconds` (median, for a batch of `timed_samples`) with `wall_seconds_min` / `wall_seconds_max` over the
timed rounds of both runs, `speedup` (the first row's wall median over this row's; NaN, not published, when
the two runs' ratios differ by more than 20%), `evaluation_speedup` (the first row's evaluations over this
row's), `classifier_score`, `frechet_distance` (of the scored batch), `threads` (torch threads while timing)
and `timed_samples`."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from farm_sweep.figures import save_figure, subplots
from farm_sweep.timing import MIN_ROUNDS, measure

CURVE_FIELDS = ("sampler", "knob", "network_evaluations", "wall_seconds", "wall_seconds_min", "wall_seconds_max",
                "speedup", "evaluation_speedup", "classifier_score", "frechet_distance", "threads", "timed_samples")


class Scorer(Protocol):
    def classifier_score(self, images: torch.Tensor) -> float: ...

    def frechet_distance(self, images: torch.Tensor) -> float: ...


Sampler = Callable[[str, int, int], tuple[torch.Tensor, int]]  # (sampler, knob, batch) -> (samples, evaluations)


def speed_quality_rows(settings: list[tuple[str, int]], draw: Sampler, scorer: Scorer, num_samples: int,
                       timed_samples: int, synchronize: Callable[[], None] | None = None,
                       rounds: int = MIN_ROUNDS) -> list[dict[str, Any]]:
    """One row per (sampler, knob), every setting drawing from the same noise: its quality scored on a batch
    of `num_samples`, its wall time measured on the first `timed_samples` of them by farm_sweep.timing.measure
    (`rounds` per run; the two batches are apart so that the method's 11 draws per setting stay cheap);
    ratios are to the first setting."""
    names = [f"{sampler}/{knob}" for sampler, knob in settings]
    drawn = {name: draw(sampler, knob, num_samples) for name, (sampler, knob) in zip(names, settings)}
    measurement = measure({name: (lambda s=s, k=k: draw(s, k, timed_samples)) for name, (s, k) in
                           zip(names, settings)}, rounds, synchronize=synchronize)
    reference_evaluations = drawn[names[0]][1]
    rows = []
    for name, (sampler, knob) in zip(names, settings):
        samples, evaluations = drawn[name]
        timing, speedup = measurement.timing(name), measurement.ratio(names[0], name)
        rows.append({"sampler": sampler, "knob": knob, "network_evaluations": evaluations,
                     "wall_seconds": timing.median, "wall_seconds_min": timing.low, "wall_seconds_max": timing.high,
                     "speedup": math.nan if speedup is None else speedup,
                     "evaluation_speedup": reference_evaluations / evaluations,
                     "classifier_score": scorer.classifier_score(samples),
                     "frechet_distance": scorer.frechet_distance(samples), "threads": measurement.threads,
                     "timed_samples": timed_samples})
    return rows


def write_speed_quality(rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    """speed_quality.csv and speed_quality.png (speed-up vs classifier score and Frechet distance; a row
    whose speed-up was not published is in the table only)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "speed_quality.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    figure, axes = subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("classifier_score", "frechet_distance")):
        for sampler in dict.fromkeys(row["sampler"] for row in rows):
            mine = [row for row in rows if row["sampler"] == sampler and not math.isnan(row["speedup"])]
            axis.plot([r["speedup"] for r in mine], [r[metric] for r in mine], "o-", label=sampler)
            for r in mine:
                axis.annotate(str(r["knob"]), (r["speedup"], r[metric]), fontsize=7,
                              textcoords="offset points", xytext=(3, 3))
        axis.set_xscale("log")
        axis.set_xlabel("wall-clock speed-up over sequential")
        axis.set_ylabel(metric.replace("_", " "))
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle("speed vs quality (labels: knob)")
    return [table, save_figure(figure, folder / "speed_quality.png")]
