"""Study-level figures (every trial's learning curve, the speed-quality Pareto front across trials, the Pareto
front of a study of several objectives, the parameter importances, the confirmation's seeds against the search,
each metric against each searched parameter) and the one way every figure is saved."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

_STATUS_COLORS = {"completed": "tab:blue", "pruned": "tab:gray", "failed": "tab:red", "interrupted": "tab:purple"}


@dataclass(frozen=True)
class SpeedQualityPoint:
    trial_id: str
    sampler: str
    knob: str
    speedup: float
    classifier_score: float


def speed_quality_points(rows: Sequence[Mapping[str, Any]]) -> list[SpeedQualityPoint]:
    """Every (trial, sampler setting) with both a speed-up and a classifier score, from the rows of a study's
    evaluation table (kind `sampling`: trial_id, sampler, knob, speedup, classifier_score, ...)."""
    return [SpeedQualityPoint(str(row["trial_id"]), row["sampler"], row["knob"], float(row["speedup"]),
                              float(row["classifier_score"]))
            for row in rows if row.get("kind") == "sampling" and _finite(row.get("speedup"))
            and _finite(row.get("classifier_score"))]


def pareto_front(points: Sequence[SpeedQualityPoint]) -> list[SpeedQualityPoint]:
    """Points no other point beats on both speed-up and classifier score (both: higher is better)."""
    def dominated(p: SpeedQualityPoint) -> bool:
        return any(q.speedup >= p.speedup and q.classifier_score >= p.classifier_score
                   and (q.speedup, q.classifier_score) != (p.speedup, p.classifier_score) for q in points)
    return sorted((p for p in points if not dominated(p)), key=lambda p: p.speedup)


def pareto_figure(points: Sequence[SpeedQualityPoint], path: Path) -> Path:
    front = pareto_front(points)
    figure, axes = subplots(figsize=(6, 4))
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


@dataclass(frozen=True)
class ObjectivePoint:
    """A trial's values of a study's first two objectives, and whether it is on the study's Pareto front."""

    trial_id: str
    x: float
    y: float
    on_front: bool


def objectives_front_figure(points: Sequence[ObjectivePoint], x_label: str, y_label: str, path: Path) -> Path:
    """Every trial at its first two objectives' values, the Pareto front highlighted and labelled by trial."""
    front = sorted((p for p in points if p.on_front), key=lambda p: (p.x, p.y))
    others = [p for p in points if not p.on_front]
    figure, axes = subplots(figsize=(7, 4.5))
    axes.scatter([p.x for p in others], [p.y for p in others], color="tab:gray", alpha=0.6, label="other trials")
    axes.plot([p.x for p in front], [p.y for p in front], "--*", color="tab:red", markersize=10,
              label="Pareto front")
    for p in front:
        axes.annotate(p.trial_id[-5:], (p.x, p.y), fontsize=7)
    axes.set(xlabel=x_label, ylabel=y_label, title="Pareto front of the study's trials")
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def learning_curves_figure(epochs: Sequence[Mapping[str, Any]], statuses: Mapping[str, str], path: Path) -> Path:
    """Validation nll_image by epoch of every trial (rows of a study's epochs table), coloured by how each
    trial ended (`statuses`: trial id to status)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in epochs:
        if _finite(row.get("nll_image")):
            curves.setdefault(str(row["trial_id"]), []).append((row["epoch"], float(row["nll_image"])))
    figure, axes = subplots(figsize=(7, 4.5))
    labelled = set()
    for trial_id, points in curves.items():
        status = statuses.get(trial_id, "unknown")
        points.sort()
        axes.plot([epoch for epoch, _ in points], [value for _, value in points], marker=".", alpha=0.7,
                  color=_STATUS_COLORS.get(status, "tab:orange"), label=None if status in labelled else status)
        labelled.add(status)
    if curves:  # the first epochs can lie far above where the trials end: show the ends
        values = [value for points in curves.values() for _, value in points]
        last = max(points[-1][1] for points in curves.values())
        axes.set_ylim(min(values) - 1, min(max(values), last + max(10.0, last - min(values))) + 1)
    integer_ticks(axes.xaxis)
    axes.set(xlabel="epoch", ylabel="validation nll_image (nats)", title="Learning curves of every trial")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def confirmation_figure(search: Sequence[Mapping[str, Any]], confirmed: Sequence[Mapping[str, Any]], path: Path,
                        shown: int = 20) -> Path:
    """The search's completed trials by validation nll_image (the best `shown`, each labelled by its parameters)
    and, beside each confirmed configuration's trial, its seeds' mean ± std on validation and on test (rows of
    confirmation.csv): whether the best configuration beats the next beyond seed noise is read off here."""
    trials = sorted((row for row in search if row["status"] == "completed" and _finite(row.get("nll_image"))),
                    key=lambda row: row["nll_image"])[:shown]
    position = {row["trial_id"]: x for x, row in enumerate(trials)}
    figure, axes = subplots(figsize=(max(6.0, 0.7 * len(trials) + 2), 4.8))
    axes.plot(range(len(trials)), [row["nll_image"] for row in trials], "o", color="tab:gray",
              label="search: validation (one seed)")
    stds = {row["config_id"]: row for row in confirmed if row["kind"] == "std"}
    for metric, offset, color, split in (("nll_image", 0.15, "tab:blue", "validation"),
                                         ("test/nll_image", 0.3, "tab:orange", "test")):
        points = [(position[row["config_id"]] + offset, row[metric], stds[row["config_id"]].get(metric) or 0.0)
                  for row in confirmed if row["kind"] == "mean" and row["config_id"] in position
                  and _finite(row.get(metric))]
        if points:
            xs, ys, errors = zip(*points)
            axes.errorbar(xs, ys, yerr=errors, fmt="s", capsize=4, color=color,
                          label=f"confirmed: {split}, mean ± std over seeds")
    axes.set_xticks(range(len(trials)), [_parameters_label(row) for row in trials], rotation=30, ha="right",
                    fontsize=7)
    axes.set(ylabel="nll_image (nats)", title="The search's best trials and their confirmation")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def parameter_figures(parameters: Sequence[tuple[str, bool]], search: Sequence[Mapping[str, Any]],
                      confirmed: Sequence[Mapping[str, Any]], folder: Path) -> list[Path]:
    """`by_<parameter>.png` for each searched (name, log scale) that took two or more values among the completed
    trials: validation nll_image and, when the study inpaints, the best case's nll_chain against it."""
    completed = [row for row in search if row["status"] == "completed" and _finite(row.get("nll_image"))]
    chain = next((key for key in (completed[0] if completed else {}) if key.startswith("inpaint/best/")
                  and key.endswith("/nll_chain")), None)
    metrics = ["nll_image"] + ([chain] if chain else [])
    return [parameter_figure(completed, confirmed, name, metrics, folder / f"by_{name}.png", log)
            for name, log in parameters
            if len({row.get(f"param.{name}") for row in completed if _present(row.get(f"param.{name}"))}) > 1]


def parameter_figure(search: Sequence[Mapping[str, Any]], confirmed: Sequence[Mapping[str, Any]], name: str,
                     metrics: Sequence[str], path: Path, log: bool = False) -> Path:
    """A panel per metric against parameter `name`: each completed search trial a point, one series per value
    of the other non-float parameters (a trial where `name` is inactive, a condition being off, a dashed
    line); each confirmed configuration's mean ± std over seeds beside its trial (validation; test in black,
    `test/<metric>`)."""
    key = f"param.{name}"
    others = sorted({k for row in search for k, v in row.items()
                     if k.startswith("param.") and k != key and _present(v) and not isinstance(v, float)})
    values = [row[key] for row in search if _present(row.get(key))]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    categories = list(dict.fromkeys(sorted(values, key=str)))

    def place(row: Mapping[str, Any]) -> float | None:
        """The row's x (None where the parameter is inactive)."""
        if not _present(row.get(key)):
            return None
        return float(row[key]) if numeric else float(categories.index(row[key]))

    def series(row: Mapping[str, Any]) -> str:
        return ", ".join(f"{k.removeprefix('param.')}={row.get(k)}" for k in others) or "search"

    colors = {label: f"C{index % 10}" for index, label in enumerate(dict.fromkeys(map(series, search)))}
    trials = {row["trial_id"]: row for row in search}
    figure, panels = subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.5), squeeze=False)
    for axes, metric in zip(panels[0], metrics):
        for label, color in colors.items():
            rows = [row for row in search if series(row) == label and _finite(row.get(metric))]
            placed = sorted((row for row in rows if place(row) is not None), key=place)
            if placed:
                axes.plot(list(map(place, placed)), [r[metric] for r in placed], "o-" if numeric else "o",
                          color=color, alpha=0.7, label=f"{label} (one seed)")
            for row in rows:
                if place(row) is None:
                    axes.axhline(row[metric], color=color, linestyle="--", label=f"{label} (no {name})")
        _confirmed_points(axes, confirmed, metric, lambda config: place(trials[config]),
                          lambda config: colors[series(trials[config])], 0.0 if numeric else 0.12, set(trials))
        if log and numeric:
            axes.set_xscale("log")
        if not numeric:
            axes.set_xticks(range(len(categories)), [str(c) for c in categories])
        axes.set(xlabel=name, ylabel=metric, title=f"{metric.rsplit('/', 1)[-1]} by {name}")
        axes.grid(alpha=0.3)
        handles = dict(zip(*reversed(axes.get_legend_handles_labels())))  # each label once
        axes.legend(handles.values(), handles.keys(), fontsize=7)
    return save_figure(figure, path)


def _confirmed_points(axes: Any, confirmed: Sequence[Mapping[str, Any]], metric: str,
                      place: Callable[[str], float | None], color: Callable[[str], str], shift: float,
                      searched: set[str]) -> None:
    """Each confirmed configuration (of a `searched` trial) as its seeds' mean ± std: validation in its series'
    colour (squares), test in black (diamonds), at `place(config_id)` (`shift` to the right on a categorical
    axis), or as a band where the parameter is inactive (place None)."""
    stds = {row["config_id"]: row for row in confirmed if row["kind"] == "std"}
    for mean in (row for row in confirmed if row["kind"] == "mean" and row["config_id"] in searched):
        config, std, x = mean["config_id"], stds.get(mean["config_id"], {}), place(mean["config_id"])
        for step, (column, tint, marker, split) in enumerate(((metric, color(config), "s", "validation"),
                                                              (f"test/{metric}", "black", "D", "test")), 1):
            if not _finite(mean.get(column)):
                continue
            spread = std.get(column) if _finite(std.get(column)) else 0.0
            label = f"confirmed {config}: {split}, mean ± std of {int(mean['n'])} seeds"
            if x is None:
                axes.axhspan(mean[column] - spread, mean[column] + spread, color=tint, alpha=0.15, label=label)
            else:
                axes.errorbar(x + step * shift, mean[column], yerr=spread, fmt=marker, color=tint, capsize=4,
                              markersize=7, markerfacecolor="none", label=label)


def _present(value: Any) -> bool:
    return value is not None and value != "" and value == value


def _parameters_label(row: Mapping[str, Any]) -> str:
    return "\n".join(f"{key.removeprefix('param.')}={value:.3g}" if isinstance(value, float)
                     else f"{key.removeprefix('param.')}={value}" for key, value in row.items()
                     if key.startswith("param."))


def importance_figure(importances: Mapping[str, float], path: Path) -> Path:
    names = list(importances)[::-1]
    figure, axes = subplots(figsize=(6, 1.5 + 0.4 * len(names)))
    axes.barh(names, [importances[name] for name in names])
    axes.set(xlabel="importance for validation nll_image", title="Parameter importance (Optuna)")
    return save_figure(figure, path)


def subplots(*grid: int, **options: Any) -> tuple[Figure, Any]:
    """`pyplot.subplots` on the headless backend. matplotlib is imported here, for the first figure, rather than
    by every process that imports a module able to draw one: it costs each trial worker about a second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*grid, **options)


def integer_ticks(axis: Axis) -> None:
    """Ticks at whole numbers only (epochs, trial numbers)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def save_figure(figure: Figure, path: Path | str, tight: bool = True) -> Path:
    """Lay out (`tight`: matplotlib's tight layout; False keeps the figure's own, e.g. room for a legend below),
    write as PNG (creating the folder) and close: every figure the project makes ends here."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and value == value and abs(value) != float("inf")
