"""confirmation.csv: the confirmation stage's results (farm_sweep.sweep.confirmation), written beside trials.csv
and read by export.

One table, tidy: a row is one (configuration, kind[, seed]). Each configuration has a `seed` row per seed (the
seed run's status, epochs, validation `nll_image`, test metrics, MLflow run, checkpoint), then a `mean` row and a
`std` row over the seeds that completed (`n` of them): every measure column holds the mean in one, the sample
standard deviation (n - 1 in the denominator; empty when n < 2) in the other. Every row names its
configuration: `search_rank` (its place in the search, by validation nll_image), `config_id` (the search trial
whose configuration it is), `confirmed_rank` (its place by mean validation nll_image over its seeds; empty
without a completed seed) and its parameters (`param.*`). Rows come by search rank, seeds in order.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from farm_sweep.sweep.results_table import METRIC

CONFIRMATION_FILE = "confirmation.csv"
SEED, MEAN, STD = "seed", "mean", "std"  # the kinds of row
MEASURES = (METRIC, "train_loss", "epochs", "best_epoch")  # besides the test/ and sampling/ metrics
MEASURE_PREFIXES = ("test/", "sampling/")
TEST_METRIC = f"test/{METRIC}"

Row = dict[str, Any]


def is_measure(column: str) -> bool:
    """A column aggregated over seeds."""
    return column in MEASURES or column.startswith(MEASURE_PREFIXES)


def table(seed_rows: Sequence[Mapping[str, Any]]) -> list[Row]:
    """The table's rows from the seed rows (`kind` seed, `search_rank`, `config_id`, `seed`, `status`, measures,
    `param.*`): grouped by configuration, each group's seeds in order, then its mean and std rows."""
    groups: dict[int, list[Mapping[str, Any]]] = {}
    for row in sorted(seed_rows, key=lambda row: (int(row["search_rank"]), int(row["seed"]))):
        groups.setdefault(int(row["search_rank"]), []).append(row)
    aggregates = {rank: _aggregates(rows) for rank, rows in groups.items()}
    ranks = _confirmed_ranks({rank: mean for rank, (mean, _) in aggregates.items()})
    rows: list[Row] = []
    for rank, group in groups.items():
        mean, std = aggregates[rank]
        rows += [_with_rank(row, ranks.get(rank)) for row in group]
        rows += [_with_rank(mean, ranks.get(rank)), _with_rank(std, ranks.get(rank))]
    return rows


def _aggregates(group: Sequence[Mapping[str, Any]]) -> tuple[Row, Row]:
    """The mean and std rows of one configuration, over its completed seeds."""
    completed = [row for row in group if row["status"] == "completed"]
    measures = [column for column in dict.fromkeys(key for row in group for key in row) if is_measure(column)]
    first = group[0]
    label = {key: first[key] for key in ("search_rank", "config_id")}
    params = {key: value for key, value in first.items() if key.startswith("param.")}
    mean: Row = {"kind": MEAN, **label, "seed": None, "n": len(completed)}
    std: Row = {"kind": STD, **label, "seed": None, "n": len(completed)}
    for column in measures:
        values = [float(row[column]) for row in completed if _is_number(row.get(column))]
        mean[column] = statistics.fmean(values) if values else None
        std[column] = statistics.stdev(values) if len(values) >= 2 else None
    return mean | params, std | params


def _confirmed_ranks(means: Mapping[int, Row]) -> dict[int, int]:
    """Search rank -> rank by mean validation nll_image (configurations without a completed seed have none)."""
    scored = sorted((row[METRIC], rank) for rank, row in means.items() if row.get(METRIC) is not None)
    return {rank: place for place, (_, rank) in enumerate(scored, start=1)}


def _with_rank(row: Mapping[str, Any], confirmed_rank: int | None) -> Row:
    """`row` with confirmed_rank after its search_rank."""
    ordered: Row = {}
    for key, value in row.items():
        ordered[key] = value
        if key == "search_rank":
            ordered["confirmed_rank"] = confirmed_rank
    return ordered


def _is_number(value: Any) -> bool:
    if value is None or value == "" or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def best_confirmed(rows: Sequence[Mapping[str, Any]], top: int) -> list[Mapping[str, Any]]:
    """For the `top` configurations by mean validation nll_image (confirmed_rank 1, 2, ...), each one's seed row
    with the lowest validation nll_image among its completed seeds (the choice uses validation, never test).
    Works on rows as written or as read back from the CSV (text cells)."""
    chosen = []
    for place in range(1, top + 1):
        seeds = [row for row in rows if row["kind"] == SEED and row["status"] == "completed"
                 and _is_number(row.get(METRIC)) and _is_number(row["confirmed_rank"])
                 and int(float(row["confirmed_rank"])) == place]
        if seeds:
            chosen.append(min(seeds, key=lambda row: float(row[METRIC])))
    return chosen


def summary(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The command's lines for the confirmation: per configuration, mean ± std of validation and test nll_image
    over its completed seeds, then every seed's values."""
    if not rows:
        return []
    seeds = sorted({int(row["seed"]) for row in rows if row["kind"] == SEED})
    lines = [f"confirmation ({len(seeds)} seeds each: {', '.join(map(str, seeds))}; mean ± std over the completed "
             f"seeds; test = the test split):",
             f"{'confirmed':>9} {'search':>6}  {'configuration':<14}{'seeds':>6}  {'valid ' + METRIC:>22}  "
             f"{'test ' + METRIC:>22}  parameters"]
    means = {row["search_rank"]: row for row in rows if row["kind"] == MEAN}
    stds = {row["search_rank"]: row for row in rows if row["kind"] == STD}
    for rank, mean in sorted(means.items(), key=lambda item: (item[1]["confirmed_rank"] or len(means) + 1, item[0])):
        group = [row for row in rows if row["kind"] == SEED and row["search_rank"] == rank]
        params = " ".join(f"{key.removeprefix('param.')}={value}" for key, value in mean.items()
                          if key.startswith("param."))
        lines.append(f"{mean['confirmed_rank'] or '-'!s:>9} {rank!s:>6}  {mean['config_id']:<14}"
                     f"{mean['n']!s:>3}/{len(group):<2}  {_spread(mean, stds[rank], METRIC):>22}  "
                     f"{_spread(mean, stds[rank], TEST_METRIC):>22}  {params}")
        lines.append("        " + "  ".join(f"seed {row['seed']}: {_value(row.get(METRIC))} / "
                                           f"{_value(row.get(TEST_METRIC))} ({row['status']})" for row in group))
    return [*lines, "  (each seed: valid / test nll_image)"]


def _spread(mean: Mapping[str, Any], std: Mapping[str, Any], column: str) -> str:
    if mean.get(column) is None:
        return "-"
    return f"{mean[column]:.3f}" + ("" if std.get(column) is None else f" ± {std[column]:.3f}")


def _value(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"
