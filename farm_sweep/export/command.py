"""Export a study's best trials: `python -m farm_sweep.export (--study NAME | --output DIR) --top K --out DIR
[--confirmed] [--register]`.

A study of several objectives exports its Pareto front (pareto_front.csv's order: best first by the first
objective). Each trial becomes a folder in its model family's export format (farm_sweep.export.formats), and an
MLflow Model logged to its trial's run in the study's MLflow store (farm_sweep.export.registry). `--confirmed`
exports the best configurations of the study's confirmation stage instead (confirmation.csv): ranked by mean
validation nll_image over their seeds, each as its seed run with the lowest validation nll_image. `--register`
also registers the exports as versions of `farm-<study>` in the MLflow model registry, the alias `champion` on the best.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from mlflow.exceptions import MlflowException
from safetensors import SafetensorError

from farm_sweep.data import DataError
from farm_sweep.export import registry
from farm_sweep.export.folder import ExportError
from farm_sweep.export.formats import export_model
from farm_sweep.sweep import stores, tracking
from farm_sweep.sweep.confirmation_table import CONFIRMATION_FILE, best_confirmed
from farm_sweep.sweep.pareto import FRONT_TABLE, PARETO_KEY
from farm_sweep.sweep.results_table import METRIC, TABLE_FILE, read_table
from farm_sweep.training.config import TrainConfig
from farm_sweep.training.loop import load_model
from farm_sweep.untrusted import PATH_CHARS, is_plain_name, quote

TEXT_COLUMNS = ("trial_id", "status", "mlflow_run_id", "checkpoint", "config_id", "kind")
REQUIRED_COLUMNS = ("trial_id", "status", METRIC, "checkpoint")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    output = args.output or Path("results") / args.study
    try:
        if args.register:
            _check_registry(output)
        folders = export_study(output, args.top, args.out, confirmed=args.confirmed)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for folder in folders:
        print(f"exported {folder}")
    try:
        publish(output, folders, args.register)
    except (ExportError, MlflowException) as error:
        print(f"error: {error}\nThe exports in {args.out} are complete; once this is fixed, export again to another "
              "--out to log them (logging and registering find what is already there)", file=sys.stderr)
        return 2
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m farm_sweep.export", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--study", help="the study's name (its results are in results/<name>)")
    source.add_argument("--output", type=Path, help="the study's output folder")
    parser.add_argument("--top", type=_positive, default=1, help="how many of the best completed trials (default 1; "
                        "a study of several objectives: of its Pareto front, by the first objective)")
    parser.add_argument("--confirmed", action="store_true",
                        help="export the best configurations of the confirmation stage (confirmation.csv; by mean "
                             "validation nll_image over seeds, each as its best seed run by validation nll_image)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the exports into")
    parser.add_argument("--register", action="store_true", help="also register them in the MLflow model registry")
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number >= 1 (how many trials to export)")
    return int(text)


def _check_registry(output: Path) -> None:
    """The study's tracking state is there and its store answers (the password of a database comes from
    PGPASSWORD or ~/.pgpass: the study does not keep it)."""
    state = output / tracking.STATE_FILE
    if not state.is_file():
        raise ExportError(f"{state}: missing, so --register cannot find the study's MLflow runs; pass the output "
                          "folder of a study run by python -m farm_sweep.run, or export without --register")
    try:
        stores.check_tracking(tracking.load(output).uri)
    except stores.StoreUnavailable as error:
        raise ExportError(f"{state}: uri: {error}") from None


def best_rows(output: Path, top: int) -> list[dict[str, str]]:
    """The `top` completed trials with the lowest validation metric (a study of several objectives: of its Pareto
    front), from <output>/trials.csv."""
    table = output / TABLE_FILE
    if not table.is_file():
        raise ExportError(f"{table}: no trials table; pass the --output folder of a finished study "
                          "(python -m farm_sweep.run writes trials.csv when the study ends)")
    rows = read_table(table)
    missing = [column for column in REQUIRED_COLUMNS if rows and column not in rows[0]]
    if missing:
        raise ExportError(f"{table}: column(s) {', '.join(missing)} missing; {_restore(table)}")
    completed = [row for row in rows if row["status"] == "completed" and row["checkpoint"]]
    if not completed:
        raise ExportError(f"{table}: no completed trial to export; run the study (or --resume it) until one "
                          "completes")
    if rows and PARETO_KEY in rows[0]:
        return _front(output, completed, top)
    try:
        return sorted(completed, key=lambda row: float(row[METRIC]))[:top]
    except (TypeError, ValueError) as error:
        raise ExportError(f"{table}: a {METRIC} value is not a number ({quote(str(error))}); "
                          f"{_restore(table)}") from None


def _front(output: Path, completed: list[dict[str, str]], top: int) -> list[dict[str, str]]:
    """A study of several objectives: the first `top` trials of its Pareto front, in the order of
    <output>/pareto_front.csv (best first by the first objective)."""
    table = output / FRONT_TABLE
    if not table.is_file():
        raise ExportError(f"{table}: missing, so the study's Pareto front is unknown; {_restore(table)}")
    by_id = {row["trial_id"]: row for row in completed if row[PARETO_KEY] == "True"}
    front = [by_id[row["trial_id"]] for row in read_table(table) if row.get("trial_id") in by_id]
    if not front:
        raise ExportError(f"{table}: no completed trial of trials.csv is on it; {_restore(table)}")
    return front[:top]


def confirmed_rows(output: Path, top: int) -> list[dict[str, str]]:
    """The seed runs of the `top` best confirmed configurations, from <output>/confirmation.csv."""
    table = output / CONFIRMATION_FILE
    if not table.is_file():
        raise ExportError(f"{table}: no confirmation table; pass the --output folder of a study with a confirm "
                          "section whose confirmation finished, or export without --confirmed")
    rows = read_table(table)
    missing = [column for column in ("kind", "confirmed_rank", *REQUIRED_COLUMNS) if rows and column not in rows[0]]
    if missing:
        raise ExportError(f"{table}: column(s) {', '.join(missing)} missing; {_restore(table)}")
    try:
        chosen = best_confirmed(rows, top)
    except (TypeError, ValueError) as error:
        raise ExportError(f"{table}: a value is not a number ({quote(str(error))}); {_restore(table)}") from None
    if not chosen:
        raise ExportError(f"{table}: no confirmed configuration has a completed seed; --resume the study until one "
                          "does, or export without --confirmed")
    return chosen


def export_study(output: Path, top: int, out: Path, confirmed: bool = False) -> list[Path]:
    """Export the `top` best trials (`confirmed`: the best confirmed configurations' seed runs) to
    out/NN_<trial id>/. Every checkpoint is loaded and every target folder checked before anything is written,
    and an existing export is never overwritten."""
    study = output.resolve().name
    table = output / (CONFIRMATION_FILE if confirmed else TABLE_FILE)
    planned = []
    for rank, row in enumerate(confirmed_rows(output, top) if confirmed else best_rows(output, top), start=1):
        folder = out / f"{rank:02d}_{_trial_name(table, row)}"
        model, config = _load_trial(output, table, row)
        metrics = {"study": study, "rank": rank,
                   **{k: v if k in TEXT_COLUMNS else _number(v) for k, v in row.items() if v != ""}}
        if folder.exists():
            raise ExportError(f"{folder}: already exists (an earlier export?); choose another --out, or move it "
                              "away first")
        planned.append((model, config, metrics, folder))
    return [_write(*export) for export in planned]


def _trial_name(table: Path, row: Mapping[str, str]) -> str:
    """The trial id, which names its export folder: a plain name, so the folder stays inside --out."""
    if not is_plain_name(row["trial_id"]):
        raise ExportError(f"{table}: trial_id {quote(row['trial_id'])} is not a plain name (letters, "
                          f"digits, '_', '-', '.'), so it cannot name an export folder; {_restore(table)}")
    return row["trial_id"]


def _write(model: torch.nn.Module, config: TrainConfig, metrics: Mapping[str, Any], folder: Path) -> Path:
    try:
        return export_model(model, config, metrics, folder)
    except OSError as error:
        raise ExportError(f"{folder}: cannot write the export ({error.strerror or error}); choose a writable --out "
                          "with free space (a folder left half-written has no manifest.json, so evaluate refuses "
                          "it: remove it)") from None


def _load_trial(output: Path, table: Path, row: Mapping[str, str]) -> tuple[torch.nn.Module, TrainConfig]:
    checkpoint = output / row["checkpoint"]
    if not checkpoint.resolve().is_relative_to(output.resolve()):
        raise ExportError(f"{table}: trial {row['trial_id']}'s checkpoint "
                          f"{quote(row['checkpoint'], PATH_CHARS)} is outside the study folder; {_restore(table)}")
    try:
        model, config = load_model(checkpoint)
    except DataError as error:
        raise ExportError(f"{checkpoint}: trial {row['trial_id']}'s data cannot be loaded: {error}") from None
    except (RuntimeError, OSError, ValueError, KeyError, SafetensorError) as error:
        raise ExportError(f"{checkpoint}: trial {row['trial_id']}'s checkpoint cannot be loaded ({error}); "
                          "restore it from the trial's MLflow run (artifacts checkpoint/), or export other "
                          "trials") from None
    return model, config


def publish(output: Path, folders: Sequence[Path], register: bool) -> None:
    """Log the exports as MLflow Models of their trials' runs and, with `register`, register them; prints each step."""
    if not (output / tracking.STATE_FILE).is_file():
        print(f"not logged to MLflow: {output / tracking.STATE_FILE} is missing (python -m farm_sweep.run writes it)")
        return
    tracker = tracking.load(output)
    logged = registry.log_exports(tracker, folders)
    for entry in logged:
        print(f"logged {entry.folder.name} as MLflow Model {entry.uri} (run {entry.run_id})")
    if register:
        result = registry.register(tracker, logged)
        for entry, version in zip(logged, result.versions):
            print(f"registered {entry.folder.name} as models:/{result.name}/{version}")
        print(f"alias {registry.CHAMPION}: models:/{result.name}@{registry.CHAMPION} is version {result.champion}")


def _restore(table: Path) -> str:
    return f"restore the table from the study's MLflow parent run (artifact study/{table.name})"


def _number(text: str) -> Any:
    """CSV cells back to numbers where they are numbers."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text
