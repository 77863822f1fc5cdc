"""Print or convert a study's tables: `python -m farm_sweep.results STUDY_OR_OUTPUT_DIR [MORE ...]
[--table trials|epochs|evaluation|confirmation] [--format table|csv|json]`.

Each argument is a study's output folder (or its tables/ folder), or the name of a study in results/. Several
studies make one table with a `study` column first: each study's name, or the folder as given where two share
a name. `table` prints aligned text to read; `csv` one header line, then a line per row (lists as JSON, a
missing value empty); `json` a list of objects (a missing value, and NaN, null). docs/studies.md lists the
columns of every table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from farm_sweep.sweep import tables
from farm_sweep.untrusted import PATH_CHARS, is_plain_name, quote

FORMATS = ("table", "csv", "json")
RESULTS = Path("results")  # where `python -m farm_sweep.run` puts a study by default


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        table = combined([(given, tables.read(table_file(given, args.table))) for given in args.studies])
    except tables.TableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        print(FORMATTERS[args.format](table.to_pylist(), table.column_names))
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m farm_sweep.results", description=__doc__.split("\n\n")[1])
    parser.add_argument("studies", nargs="+", metavar="STUDY_OR_OUTPUT_DIR",
                        help="a study's output folder, its tables/ folder, or the name of a study in results/")
    parser.add_argument("--table", choices=tables.TABLES, default="trials", help="which table (default: trials)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="how to print it (default: table)")
    return parser


def table_file(given: str, name: str) -> Path:
    """The file of table `name` for a command-line argument; TableError naming the argument if there is none."""
    path = Path(given)
    folders = [path / tables.FOLDER, path, *([RESULTS / given / tables.FOLDER] if is_plain_name(given) else [])]
    for folder in folders:
        if (folder / f"{name}.parquet").is_file():
            return folder / f"{name}.parquet"
    raise tables.TableError(
        f"{quote(given, PATH_CHARS)}: STUDY_OR_OUTPUT_DIR: no {tables.FOLDER}/{name}.parquet there; give the output "
        f"folder of a study (python -m farm_sweep.run writes {tables.FOLDER}/ into it as the study runs) or the name "
        f"of a study in {RESULTS}/")


def combined(loaded: Sequence[tuple[str, pa.Table]]) -> pa.Table:
    """One table; several get a `study` column first (see the module docstring)."""
    if len(loaded) == 1:
        return loaded[0][1]
    names = [tables.study_name(table) or given for given, table in loaded]
    labels = names if len(set(names)) == len(names) else [given for given, _ in loaded]
    try:
        return pa.concat_tables([table.add_column(0, "study", pa.array([label] * table.num_rows, pa.string()))
                                 for label, (_, table) in zip(labels, loaded)], promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid) as error:
        raise tables.TableError(f"{', '.join(map(quote, labels))}: {error}; a parameter of different types in "
                                "two studies cannot share a column: read the studies one at a time") from None


def as_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [columns, *([_text(row[column], brief=True) for column in columns] for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells)


def as_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_text(row[column]) for column in columns] for row in rows)
    return text.getvalue().rstrip("\n")


def as_json(rows: list[dict[str, Any]], columns: list[str]) -> str:
    objects = [json.dumps({column: _json(row[column]) for column in columns}, allow_nan=False) for row in rows]
    return "[\n" + ",\n".join(objects) + "\n]" if objects else "[]"


FORMATTERS = {"table": as_table, "csv": as_csv, "json": as_json}


def _text(value: Any, brief: bool = False) -> str:
    if value is None:
        return "-" if brief else ""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds") if brief else value.isoformat()
    if isinstance(value, list | dict):
        return json.dumps(value)
    if isinstance(value, float) and brief:
        return f"{value:.6g}"
    return str(value)


def _json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return value
