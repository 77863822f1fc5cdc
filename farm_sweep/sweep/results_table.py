"""trials.csv: one row per trial of a study, written by the runner and read by export."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

METRIC = "nll_image"  # the study objective: validation nats per image, minimized
TABLE_FILE = "trials.csv"
STATUSES = ("completed", "pruned", "failed", "interrupted", "incomplete")


def write_table(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Written beside `path` and renamed over it: a failed write (a full disk) leaves the previous table."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    staging = path.with_name(f".{path.name}.tmp")
    with open(staging, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()} for row in rows)
    os.replace(staging, path)
    return path


def read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def best_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The completed trial with the lowest validation metric."""
    completed = [row for row in rows if row["status"] == "completed" and row[METRIC] is not None]
    return min(completed, key=lambda row: float(row[METRIC]), default=None)
