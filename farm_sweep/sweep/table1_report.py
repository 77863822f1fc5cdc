"""The paper's Table 1 from a study: `python -m farm_sweep.table1 --study FILE --output DIR`.

Each row is a configuration of the study's confirmation stage (a FARM row once per fill of the study's
`evaluation.inpaint` section). On the test split a cell is the mean ± sample standard deviation over the
confirmation's seeds (`tables/confirmation.parquet`), with the paper's value in parentheses where the paper
has that row, in bold where ours is at or below it. On the validation split (the split the paper's code used)
a cell is the configuration's search trial, one seed (`tables/evaluation.parquet`). A row's name says its k,
loss and divergence as the paper's do, and its λ, and any other parameter in which configurations differ:
the paper's KL rows were trained at λ = 100, so a KL row at another λ is named with its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm_sweep.evaluation.settings import validate_settings
from farm_sweep.evaluation.table1 import PAPER, PAPER_DATASET
from farm_sweep.occlusions import CASES
from farm_sweep.sweep import tables
from farm_sweep.sweep.confirmation_table import MEAN, STD, TEST_METRIC
from farm_sweep.sweep.study import Study, StudyError

CELLS = ("l2", "nll_chain", "nll_exact")  # per case; the paper reports the first two
PAPER_CELLS = ("l2", "nll_chain")
PAPER_KL_WEIGHT = 100.0  # the paper code's λ
ROW_PARAMS = ("num_orderings", "loss", "divergence", "divergence_weight")
LOSS_SUFFIX = {"mc": "", "ensemble": " + FARM loss"}
FILL_NOTE = {"best_evidence": " (the paper code's fill)"}


@dataclass(frozen=True)
class Line:
    """One line of the table: a configuration under one fill."""

    label: str
    paper: tuple[tuple[float, float], ...] | None  # (L2, NLL) per case, when the paper has the row
    config_id: str
    fill: str


def markdown(study: Study, output: Path) -> str:
    """Table 1 of the study's confirmed configurations, test split then validation split."""
    section = validate_settings(study.evaluation)["inpaint"] if study.evaluation else None
    if section is None:
        raise StudyError(study.path, "evaluation", "Table 1 needs an `inpaint` section (cases, fills, protocol); "
                         "add one and run the study")
    confirmed = _confirmed(study, output)
    params = {config_id: {**study.space.fixed, **row["params"]} for config_id, row in confirmed.items()}
    lines = _lines(params, section["fills"], study.space.fixed.get("dataset") == PAPER_DATASET)
    seeds = max(int(row[MEAN]["n"]) for row in confirmed.values())
    evaluated = _search_evaluation(output)
    parts = [_header(study, section, seeds),
             f"\n### Test split: mean ± std over the confirmation's seeds\n\n{_table(lines, _test_cells(confirmed))}",
             "\n### Validation split (the split the paper's code used): each configuration's search trial, one seed"
             f"\n\n{_table(lines, _validation_cells(evaluated))}"]
    return "\n".join(parts) + "\n"


def _confirmed(study: Study, output: Path) -> dict[str, dict[str, Any]]:
    """{config_id: {"params", MEAN: row, STD: row}} of the configurations with a completed seed."""
    path = output / tables.FOLDER / "confirmation.parquet"
    if not path.is_file():
        raise StudyError(study.path, "confirm", f"{path} does not exist: the study has no finished confirmation "
                         "stage there; give the study's --output folder, or run (or --resume) the study to its end")
    found: dict[str, dict[str, Any]] = {}
    for row in tables.read(path).to_pylist():
        if row["kind"] in (MEAN, STD) and row["n"]:
            entry = found.setdefault(row["config_id"], {"params": _params(row)})
            entry[row["kind"]] = row
    return found


def _params(row: Mapping[str, Any]) -> dict[str, Any]:
    return {key.removeprefix(tables.PARAM_PREFIX): value for key, value in row.items()
            if key.startswith(tables.PARAM_PREFIX) and value is not None}


def _lines(params: Mapping[str, Mapping[str, Any]], fills: Sequence[str], paper: bool) -> list[Line]:
    """A line per configuration and fill (one for k = 1, whose fills are all its single ordering)."""
    differing = sorted({key for values in params.values() for key in values if key not in ROW_PARAMS and
                        len({repr(other.get(key)) for other in params.values()}) > 1})
    lines = []
    for config_id, values in params.items():
        name, paper_name = _row_name(values)
        name += "".join(f", {key} = {values.get(key)}" for key in differing)
        k = int(values.get("num_orderings", 1))
        shown = fills[:1] if k == 1 else fills
        for fill in shown:
            label = name if k == 1 else f"{name}, `{fill}`{FILL_NOTE.get(fill, '')}"
            lines.append(Line(label, PAPER.get(paper_name) if paper else None, config_id, fill))
    return lines


def _row_name(values: Mapping[str, Any]) -> tuple[str, str]:
    """(this row's name, the paper's row it compares with): the paper's name, with λ for a divergence."""
    k, loss, divergence = int(values.get("num_orderings", 1)), values.get("loss", "mc"), values.get("divergence",
                                                                                                     "none")
    if k == 1:
        return "MADE (k = 1) baseline", "MADE (k = 1) baseline"
    base = f"FARM + MADE (k = {k}){LOSS_SUFFIX.get(loss, f' + {loss} loss')}"
    if divergence == "none":
        return base, base
    weight = float(values.get("divergence_weight", 1.0))
    paper_name = f"{base} + KL" if divergence == "kl" else ""
    note = " (the paper's λ)" if weight == PAPER_KL_WEIGHT and divergence == "kl" else ""
    return f"{base} + {divergence.upper()}, λ = {weight:g}{note}", paper_name


def _test_cells(confirmed: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, str]]:
    """{(config_id, fill): {column: "mean ± std"}} from the confirmation's aggregate rows."""
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for config_id, row in confirmed.items():
        mean, std = row[MEAN], row[STD]
        for key, value in mean.items():
            parts = key.split("/")
            if len(parts) == 5 and parts[:2] == ["test", "inpaint"] and value is not None:
                case, fill, metric = parts[2:]
                cells.setdefault((config_id, fill), {})[f"{case}/{metric}"] = _spread(value, std.get(key))
        for fill_cells in (cells[key] for key in cells if key[0] == config_id):
            fill_cells["nll_image"] = _spread(mean[TEST_METRIC], std.get(TEST_METRIC), digits=2)
            fill_cells["n"] = str(mean["n"])
    return cells


def _spread(mean: float, std: float | None, digits: int = 4) -> str:
    shown = f"{mean:.{digits}f}"
    return shown if std is None or math.isnan(std) else f"{shown} ± {std:.{digits}f}"


def _search_evaluation(output: Path) -> dict[str, list[dict[str, Any]]]:
    """The search trials' rows of the evaluation and trials tables, by trial id ({} where there are none)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for name in ("trials", "evaluation"):
        path = output / tables.FOLDER / f"{name}.parquet"
        for row in tables.read(path).to_pylist() if path.is_file() else []:
            found.setdefault(row["trial_id"], []).append(row)
    return found


def _validation_cells(evaluated: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[tuple[str, str], dict[str, str]]:
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for trial_id, rows in evaluated.items():
        trial = next((row for row in rows if "kind" not in row), {})
        for row in rows:
            if row.get("kind") == "inpaint":
                found = cells.setdefault((trial_id, row["fill"]), {"n": "1"})
                found |= {f"{row['case']}/{metric}": f"{row[metric]:.4f}" for metric in CELLS
                          if row.get(metric) is not None}
                if trial.get("nll_image") is not None:
                    found["nll_image"] = f"{trial['nll_image']:.2f}"
    return cells


def _table(lines: Sequence[Line], cells: Mapping[tuple[str, str], Mapping[str, str]]) -> str:
    header = "| model | " + " | ".join(f"{case} L2 | {case} NLL chain | {case} NLL exact" for case in CASES) + \
        " | nll_image | seeds |"
    rows = [header, "|---" * (3 + len(CELLS) * len(CASES)) + "|"]
    for line in lines:
        found = cells.get((line.config_id, line.fill), {})
        values = []
        for index, case in enumerate(CASES):
            for metric in CELLS:
                values.append(_cell(found.get(f"{case}/{metric}", "-"), _paper_value(line, index, metric)))
        rows.append(f"| {line.label} | " + " | ".join(values) + f" | {found.get('nll_image', '-')} | "
                    f"{found.get('n', '-')} |")
    return "\n".join(rows)


def _paper_value(line: Line, case_index: int, metric: str) -> float | None:
    if line.paper is None or metric not in PAPER_CELLS:
        return None
    return line.paper[case_index][PAPER_CELLS.index(metric)]


def _cell(ours: str, paper: float | None) -> str:
    """`ours (paper)`, ours in bold when its mean is at or below the paper's."""
    if paper is None or ours == "-":
        return ours
    mean = float(ours.split(" ")[0])
    return f"**{ours}** ({paper:.4f})" if mean <= paper else f"{ours} ({paper:.4f})"


def _header(study: Study, section: Mapping[str, Any], seeds: int) -> str:
    fixed = study.space.fixed
    return (f"## Table 1 from the study `{study.name}` ({study.path.name})\n\n"
            f"Budget: {', '.join(f'{key} {fixed[key]}' for key in sorted(fixed) if key not in ROW_PARAMS)}; "
            f"rows as the study's confirmation stage chose them, each trained with {seeds} fresh seeds "
            f"(`confirm` in the study file). Occlusion protocol `{section['protocol']}`, "
            f"{section['num_occlusions']} occlusions x {section['images_per_occlusion']} images per case. "
            "Cells: ours (paper), ours in bold where at or below the paper's; NLL in nats per occluded pixel; "
            "`chain` = the paper's NLL (earlier hole pixels sampled), `exact` = teacher-forced; nll_image = "
            "whole-image NLL of the k-ordering mixture, nats. The paper's KL rows are at its λ = 100; a row "
            "at another λ is named with it.")
