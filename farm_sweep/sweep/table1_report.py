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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm_sweep.evaluation.settings import validate_settings
from farm_sweep.evaluation.table1 import PAPER, PAPER_DATASET
from farm_sweep.figures import save_figure, subplots
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


Spread = tuple[float, float | None]  # a mean and its standard deviation (None: one seed)


@dataclass
class Measured:
    """A line's cells (`<case>/<metric>` and nll_image) over `seeds` seeds."""

    seeds: int
    values: dict[str, Spread] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyTable:
    """What Table 1 is drawn from: the study, its output folder, its inpainting section, its confirmed
    configurations ({config_id: {"params", MEAN: row, STD: row}}) and the table's lines."""

    study: Study
    output: Path
    section: dict[str, Any]
    confirmed: dict[str, dict[str, Any]]
    lines: list[Line]

    @property
    def seeds(self) -> int:
        return max(int(row[MEAN]["n"]) for row in self.confirmed.values())


def read(study: Study, output: Path) -> StudyTable:
    """The study's Table 1 from its output folder; StudyError without an inpainting section or a confirmed seed."""
    section = validate_settings(study.evaluation)["inpaint"] if study.evaluation else None
    if section is None:
        raise StudyError(study.path, "evaluation", "Table 1 needs an `inpaint` section (cases, fills, protocol); "
                         "add one and run the study")
    confirmed = _confirmed(study, output)
    params = {config_id: {**study.space.fixed, **row["params"]} for config_id, row in confirmed.items()}
    lines = _lines(params, section["fills"], study.space.fixed.get("dataset") == PAPER_DATASET)
    return StudyTable(study, output, section, confirmed, lines)


def markdown(table: StudyTable) -> str:
    """Table 1 of the study's confirmed configurations, test split then validation split."""
    test, valid = _test_cells(table.confirmed), _validation_cells(table.output)
    parts = [_header(table.study, table.section, table.seeds),
             f"\n### Test split: mean ± std over the confirmation's seeds\n\n{_table(table.lines, test)}",
             "\n### Validation split (the split the paper's code used): each configuration's search trial, one seed"
             f"\n\n{_table(table.lines, valid)}"]
    return "\n".join(parts) + "\n"


def figure(table: StudyTable, path: Path) -> Path:
    """Table 1's test split as bars: per case, each line's L2 and chain NLL (mean ± std over the confirmation's
    seeds), the paper's value as a black bar where the paper has the row."""
    lines, cells = table.lines, _test_cells(table.confirmed)
    legend_inches = 0.2 * math.ceil((len(lines) + 1) / 2) + 0.3
    drawing, panels = subplots(1, len(PAPER_CELLS), figsize=(13, 4.5 + legend_inches))
    width = 0.85 / len(lines)
    for axes, metric in zip(panels, PAPER_CELLS):
        for index, line in enumerate(lines):
            xs = [case + (index - (len(lines) - 1) / 2) * width for case in range(len(CASES))]
            found = cells.get((line.config_id, line.fill), Measured(0)).values
            spreads = [found.get(f"{case}/{metric}", (math.nan, None)) for case in CASES]
            axes.bar(xs, [mean for mean, _ in spreads], width, yerr=[std or 0.0 for _, std in spreads], capsize=2,
                     label=line.label.replace("`", ""), color=f"C{index}")
            if line.paper is not None:
                axes.hlines([line.paper[case][PAPER_CELLS.index(metric)] for case in range(len(CASES))],
                            [x - width / 2 for x in xs], [x + width / 2 for x in xs], color="black", linewidth=2,
                            label="the paper's value for the row")
        axes.set_xticks(range(len(CASES)), [f"{case} case" for case in CASES])
        axes.set(ylabel=f"{metric} (per occluded pixel)", title=f"Table 1 of {table.study.name}: {metric}")
        axes.grid(axis="y", alpha=0.3)
    handles = dict(zip(*reversed(panels[0].get_legend_handles_labels())))  # each label once
    drawing.legend(handles.values(), handles.keys(), loc="lower center", ncol=2, fontsize=8,
                   title=f"test split, mean ± std over {table.seeds} seeds", title_fontsize=8)
    drawing.tight_layout(rect=(0, legend_inches / (4.5 + legend_inches), 1, 1))  # the legend below the panels
    return save_figure(drawing, path, tight=False)


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
    if not found:
        raise StudyError(study.path, "confirm", f"{path}: no configuration completed a seed; see its seed rows' "
                         "failure_reason, then continue the study with --resume")
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


def _test_cells(confirmed: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, str], Measured]:
    """{(config_id, fill): its cells} from the confirmation's mean and std rows."""
    cells: dict[tuple[str, str], Measured] = {}
    for config_id, row in confirmed.items():
        mean, std = row[MEAN], row[STD]
        for key, value in mean.items():
            parts = key.split("/")
            if len(parts) == 5 and parts[:2] == ["test", "inpaint"] and value is not None:
                case, fill, metric = parts[2:]
                measured = cells.setdefault((config_id, fill), Measured(
                    int(mean["n"]), {"nll_image": (mean[TEST_METRIC], std.get(TEST_METRIC))}))
                measured.values[f"{case}/{metric}"] = (value, std.get(key))
    return cells


def _validation_cells(output: Path) -> dict[tuple[str, str], Measured]:
    """{(search trial id, fill): its cells} from the search's trials and evaluation tables (one seed)."""
    trials = {row["trial_id"]: row for row in _table_rows(output, "trials")}
    cells: dict[tuple[str, str], Measured] = {}
    for row in _table_rows(output, "evaluation"):
        if row["kind"] == "inpaint":
            nll = trials.get(row["trial_id"], {}).get("nll_image")
            measured = cells.setdefault((row["trial_id"], row["fill"]),
                                        Measured(1, {} if nll is None else {"nll_image": (nll, None)}))
            measured.values |= {f"{row['case']}/{metric}": (row[metric], None) for metric in CELLS
                                if row.get(metric) is not None}
    return cells


def _table_rows(output: Path, name: str) -> list[dict[str, Any]]:
    path = output / tables.FOLDER / f"{name}.parquet"
    return tables.read(path).to_pylist() if path.is_file() else []


def _table(lines: Sequence[Line], cells: Mapping[tuple[str, str], Measured]) -> str:
    header = "| model | " + " | ".join(f"{case} L2 | {case} NLL chain | {case} NLL exact" for case in CASES) + \
        " | nll_image | seeds |"
    rows = [header, "|---" * (3 + len(CELLS) * len(CASES)) + "|"]
    for line in lines:
        found = cells.get((line.config_id, line.fill), Measured(0))
        values = [_cell(found, f"{case}/{metric}", _paper_value(line, index, metric))
                  for index, case in enumerate(CASES) for metric in CELLS]
        nll = _shown(found.values["nll_image"], digits=2) if "nll_image" in found.values else "-"
        rows.append(f"| {line.label} | " + " | ".join(values) + f" | {nll} | {found.seeds or '-'} |")
    return "\n".join(rows)


def _paper_value(line: Line, case_index: int, metric: str) -> float | None:
    if line.paper is None or metric not in PAPER_CELLS:
        return None
    return line.paper[case_index][PAPER_CELLS.index(metric)]


def _cell(found: Measured, column: str, paper: float | None) -> str:
    """`ours (paper)`, ours in bold when its mean is at or below the paper's; "-" when not measured."""
    if column not in found.values:
        return "-"
    shown = _shown(found.values[column])
    if paper is None:
        return shown
    return f"**{shown}** ({paper:.4f})" if found.values[column][0] <= paper else f"{shown} ({paper:.4f})"


def _shown(spread: Spread, digits: int = 4) -> str:
    mean, std = spread
    text = f"{mean:.{digits}f}"
    return text if std is None or math.isnan(std) else f"{text} ± {std:.{digits}f}"


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
