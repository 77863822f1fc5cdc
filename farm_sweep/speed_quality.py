"""The speed-quality curve of fast sampling (DESIGN 5), shared by every model family: its columns, the
scorer it needs, and its table and figure."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Protocol

import matplotlib
import matplotlib.pyplot as plt
import torch

from farm_sweep.figures import save_figure

matplotlib.use("Agg")

CURVE_FIELDS = ("sampler", "knob", "network_evaluations", "wall_seconds", "speedup", "evaluation_speedup",
                "classifier_score", "frechet_distance")


class Scorer(Protocol):
    def classifier_score(self, images: torch.Tensor) -> float: ...

    def frechet_distance(self, images: torch.Tensor) -> float: ...


def write_speed_quality(rows: list[dict[str, Any]], folder: Path) -> list[Path]:
    """speed_quality.csv and speed_quality.png (speed-up vs classifier score and Frechet distance)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "speed_quality.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("classifier_score", "frechet_distance")):
        for sampler in dict.fromkeys(row["sampler"] for row in rows):
            mine = [row for row in rows if row["sampler"] == sampler]
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
