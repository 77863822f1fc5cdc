"""A run's learning curve: every epoch's metrics as CSV, and validation nll_image per epoch as a figure."""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from farm_sweep.figures import integer_ticks, save_figure, subplots
from farm_sweep.made.likelihood import PER_ORDERING  # one column per ordering: in the history, not the curve


def write_curve(history: Sequence[Mapping[str, Any]], path: Path, title: str) -> list[Path]:
    """`path` (CSV, one row per epoch) and `path` with suffix .png; both rewritten whole, so always complete."""
    columns = [key for key in dict.fromkeys(k for row in history for k in row) if not key.startswith(PER_ORDERING)]
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    with open(staging, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    staging.replace(path)
    return [path, curve_figure({title: history}, path.with_suffix(".png"))]


def curve_figure(curves: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> Path:
    """Validation nll_image per epoch for each named run, its best epoch marked."""
    figure, axes = subplots(figsize=(7, 4.5))
    for label, history in curves.items():
        epochs = [int(row["epoch"]) for row in history]
        values = [float(row["nll_image"]) for row in history]
        best = min(range(len(values)), key=values.__getitem__)
        line, = axes.plot(epochs, values, label=f"{label} (lowest {values[best]:.2f} at epoch {epochs[best]})")
        axes.plot(epochs[best], values[best], "o", color=line.get_color())
    integer_ticks(axes.xaxis)
    axes.set(xlabel="epoch", ylabel="validation nll_image (nats)", title="Learning curves")
    bests = [min(float(row["nll_image"]) for row in history) for history in curves.values()]
    axes.set_ylim(min(bests) - 1, max(bests) + 12)  # the first epochs are far above: show where runs end
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    """`python -m farm_sweep.training.curve --out FIGURE.png LABEL=curve.csv ...`: several runs in one figure."""
    parser = argparse.ArgumentParser(prog="python -m farm_sweep.training.curve", description=main.__doc__)
    parser.add_argument("runs", nargs="+", help="LABEL=path/to/curve.csv (written by train --curve)")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    curves = {}
    for run in args.runs:
        label, _, path = run.rpartition("=")
        with open(path, newline="") as handle:
            curves[label or Path(path).parent.name] = list(csv.DictReader(handle))
    print(curve_figure(curves, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
