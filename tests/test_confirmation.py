"""The confirmation stage (`confirm: {top, seeds}`) on a real local Ray, real Optuna and real MLflow.

One study serves every check: a search of two configurations (digits, a hidden layer of 16, 2 epochs), then
its two best trained again with two fresh seeds each and evaluated on the test split. The real command runs it
and is stopped with SIGINT once the first seed has finished; `--resume` completes it.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from mlflow import MlflowClient
from ray import tune

from farm_sweep import figures
from farm_sweep import table1 as table1_command
from farm_sweep.export.command import export_study
from farm_sweep.sweep import confirmation, table1_report, tables, tracking
from farm_sweep.sweep.confirmation_table import CONFIRMATION_FILE, is_measure
from farm_sweep.sweep.results_table import read_table
from farm_sweep.sweep.runner import plan as plan_lines
from farm_sweep.sweep.runner import run_study
from farm_sweep.sweep.study import load_study
from farm_sweep.training import checkpoint
from farm_sweep.training.loop import load_model, load_split, task_for
from tests.processes import read_until

ROOT = Path(__file__).resolve().parents[1]
NAME, EPOCHS, TOP, SEEDS = "confirm", 2, 2, 2
LRS = [2e-2, 1e-2]


@dataclass(frozen=True)
class Confirmed:
    """The study after the interruption and after --resume."""

    output: Path
    said: str  # the interrupted command's output
    exit_status: int
    interrupted: list[dict[str, str]]  # confirmation.csv as the interrupted run left it
    killed: dict[str, str]  # the MLflow status of the parent and the confirmation run after the interruption
    search: list[dict[str, Any]]  # the search's rows after --resume
    table: list[dict[str, str]]  # confirmation.csv after --resume


@pytest.fixture(scope="module")
def confirmed(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Confirmed]:
    folder = tmp_path_factory.mktemp("confirm")
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump({
        "name": NAME, "fixed": {"dataset": "digits", "hidden_sizes": [16], "epochs": EPOCHS, "batch_size": 50},
        "search_space": {"parameters": {"lr": {"distribution": "categorical", "choices": LRS}}},
        "trials": len(LRS), "enqueue": [{"lr": lr} for lr in LRS], "pruner": "none", "max_concurrent_trials": 2,
        "resources": {"cpus": 1}, "confirm": {"top": TOP, "seeds": SEEDS},
        "evaluation": {"inpaint": {"cases": ["best"], "fills": ["single"], "num_occlusions": 2,
                                   "images_per_occlusion": 4}, "sampling": None}}, sort_keys=False))
    output = folder / "out"
    driver = subprocess.Popen(
        [sys.executable, "-m", "farm_sweep.run", str(path), "--output", str(output), "--address", ray_address],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    try:
        said = "".join(read_until(driver, "completed after epoch", after="confirmation:", timeout=600))
        driver.send_signal(signal.SIGINT)
        said += driver.communicate(timeout=300)[0]
    finally:
        driver.kill()
        driver.wait()
    interrupted = read_table(output / CONFIRMATION_FILE)
    killed = {name: run.info.status for name, run in study_runs(output).items()}
    search = run_study(load_study(path), output, resume=True)
    yield Confirmed(output, said, driver.returncode, interrupted, killed, search,
                    read_table(output / CONFIRMATION_FILE))


def study_runs(output: Path) -> dict[str, Any]:
    """The study's parent run and its confirmation run."""
    client = MlflowClient(tracking.default_uri(output))
    runs = client.search_runs([client.get_experiment_by_name(NAME).experiment_id])
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    (stage,) = [run for run in runs if run.data.tags.get("farm.stage") == "confirmation"]
    return {"parent": parent, "confirmation": stage}


def seed_rows(table: list[dict[str, str]]) -> list[dict[str, str]]:
    return [row for row in table if row["kind"] == "seed"]


def test_the_best_configurations_are_trained_again_with_fresh_distinct_seeds(confirmed: Confirmed) -> None:
    seeds = seed_rows(confirmed.table)
    assert len(seeds) == TOP * SEEDS and {row["status"] for row in seeds} == {"completed"}
    best_first = sorted(confirmed.search, key=lambda row: row["nll_image"])
    assert [(row["search_rank"], row["config_id"]) for row in seeds] == [
        (str(rank), best_first[rank - 1]["trial_id"]) for rank in range(1, TOP + 1) for _ in range(SEEDS)]
    plan = confirmation.load_plan(confirmed.output)
    assert plan.seeds == (1, 2)  # the search trained with seed 0 (TrainConfig's default)
    for row in seeds:
        state = checkpoint.read_state(confirmed.output / row["checkpoint"])
        assert state["config"]["seed"] == int(row["seed"])  # the seed reached training
        assert state["config"]["lr"] == float(row["param.lr"]) == best_first[int(row["search_rank"]) - 1]["param.lr"]
    by_configuration: dict[str, list[str]] = {}
    for row in seeds:
        by_configuration.setdefault(row["config_id"], []).append(row["seed"])
    assert all(values == ["1", "2"] for values in by_configuration.values())
    assert len({row["nll_image"] for row in seeds}) == len(seeds)  # different seeds, different models


def test_each_seed_is_evaluated_on_the_test_split(confirmed: Confirmed) -> None:
    row = seed_rows(confirmed.table)[0]
    model, config = load_model(confirmed.output / row["checkpoint"])
    test = task_for(config).evaluate(model, load_split(config, "test").images)["nll_image"]
    assert float(row["test/nll_image"]) == pytest.approx(test)
    assert float(row["test/nll_image"]) != pytest.approx(float(row["nll_image"]))
    assert {column for column in row if column.startswith("test/inpaint/")} == {
        f"test/inpaint/best/single/{name}" for name in
        ("l2", "nll_chain", "nll_exact", "nll_chain_bits", "nll_exact_bits", "occluded_fraction")}
    assert not any(column.startswith("inpaint/") for column in row)


def test_aggregate_rows_are_the_mean_and_std_of_the_seed_rows(confirmed: Confirmed) -> None:
    table = confirmed.table
    assert [row["kind"] for row in table] == ["seed", "seed", "mean", "std"] * TOP
    measures = [column for column in table[0] if is_measure(column)]
    assert {"nll_image", "test/nll_image", "test/inpaint/best/single/l2", "epochs"} <= set(measures)
    for start in range(0, len(table), SEEDS + 2):
        seeds, mean, std = table[start:start + SEEDS], table[start + SEEDS], table[start + SEEDS + 1]
        assert mean["config_id"] == std["config_id"] == seeds[0]["config_id"] and mean["n"] == str(SEEDS)
        for column in measures:
            values = [float(row[column]) for row in seeds]
            assert float(mean[column]) == pytest.approx(statistics.fmean(values)), column
            assert float(std[column]) == pytest.approx(statistics.stdev(values)), column
    means = sorted((float(row["nll_image"]), row["confirmed_rank"]) for row in table if row["kind"] == "mean")
    assert [rank for _, rank in means] == [str(place) for place in range(1, TOP + 1)]


def test_an_interrupted_confirmation_resumes_without_running_finished_seeds(confirmed: Confirmed) -> None:
    assert confirmed.exit_status == 130, confirmed.said[-3000:]
    assert "--resume" in confirmed.said
    assert len(seed_rows(confirmed.interrupted)) == TOP * SEEDS  # seeds not started yet too
    finished = [row["trial_id"] for row in seed_rows(confirmed.interrupted) if row["status"] == "completed"]
    unfinished = [row for row in seed_rows(confirmed.interrupted) if row["status"] != "completed"]
    assert finished and unfinished and {row["status"] for row in unfinished} == {"interrupted"}
    assert confirmed.killed == {"parent": "KILLED", "confirmation": "KILLED"}

    reported = {trial_id: list(frame["epoch"]) for trial_id, frame in
                tune.ExperimentAnalysis(str(confirmation.folder(confirmed.output, NAME))).trial_dataframes.items()}
    assert sorted(reported) == sorted(row["trial_id"] for row in seed_rows(confirmed.table))  # no trial twice
    for trial_id in finished:
        assert reported[trial_id] == list(range(1, EPOCHS + 1)), f"finished seed {trial_id} ran again"
    search = tune.ExperimentAnalysis(str(confirmed.output / "ray" / NAME)).trial_dataframes
    assert len(search) == len(LRS)  # the search ran no trial again
    assert all(list(frame["epoch"]) == list(range(1, EPOCHS + 1)) for frame in search.values())

    client = MlflowClient(tracking.default_uri(confirmed.output))
    runs = client.search_runs([client.get_experiment_by_name(NAME).experiment_id])
    parent, stage = study_runs(confirmed.output).values()
    assert parent.info.status == stage.info.status == "FINISHED"
    assert stage.data.tags["mlflow.parentRunId"] == parent.info.run_id
    seed_runs = {run.data.tags[tracking.TRIAL_TAG]: run for run in runs
                 if run.data.tags.get("mlflow.parentRunId") == stage.info.run_id}
    assert len(seed_runs) == TOP * SEEDS  # one run per seed, the resumed ones included
    for row in seed_rows(confirmed.table):
        run = seed_runs[row["trial_id"]]
        assert (run.data.tags["farm.config_id"], run.data.tags["farm.search_rank"], run.data.tags["farm.seed"]) == (
            row["config_id"], row["search_rank"], row["seed"])
        assert run.info.status == "FINISHED" and run.info.run_id == row["mlflow_run_id"]
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "nll_image"))
        assert steps == list(range(1, EPOCHS + 1))
    best = next(row for row in confirmed.table if row["kind"] == "mean" and row["confirmed_rank"] == "1")
    assert parent.data.tags["farm.confirmed_config_id"] == best["config_id"]
    assert parent.data.metrics["confirmed/test/nll_image/mean"] == pytest.approx(float(best["test/nll_image"]))
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "study")} >= {
        f"study/{CONFIRMATION_FILE}", f"study/{confirmation.FIGURE_FILE}", "study/by_lr.png"}
    for figure in (confirmation.FIGURE_FILE, "by_lr.png"):  # beside the table
        assert (confirmed.output / figure).read_bytes().startswith(b"\x89PNG")


def test_parameter_figures_only_for_parameters_that_varied_among_completed_trials(tmp_path: Path) -> None:
    """λ varied (a trial without it, its condition off, is a line); `width` took one value among the completed
    trials (the other was pruned): no figure for it."""
    search = [{"trial_id": f"t{i}", "status": status, "nll_image": 100.0 + i, "param.divergence": divergence,
               "param.divergence_weight": weight, "param.width": width}
              for i, (status, divergence, weight, width) in enumerate([
                  ("completed", "none", None, 8), ("completed", "kl", 0.1, 8), ("completed", "kl", 10.0, 8),
                  ("pruned", "jsd", 1.0, 16)])]
    confirmed = [{"kind": "mean", "config_id": "t0", "n": 2, "nll_image": 100.2, "test/nll_image": 101.0},
                 {"kind": "std", "config_id": "t0", "n": 2, "nll_image": 0.3, "test/nll_image": 0.2}]
    written = figures.parameter_figures([("divergence", False), ("divergence_weight", True), ("width", False)],
                                        search, confirmed, tmp_path)
    assert [path.name for path in written] == ["by_divergence.png", "by_divergence_weight.png"]
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in written)


def test_export_takes_the_best_seed_of_the_best_confirmed_configuration(confirmed: Confirmed, tmp_path: Path) -> None:
    (folder,) = export_study(confirmed.output, 1, tmp_path, confirmed=True)
    best = next(row for row in confirmed.table if row["kind"] == "mean" and row["confirmed_rank"] == "1")
    seeds = [row for row in seed_rows(confirmed.table) if row["config_id"] == best["config_id"]]
    chosen = min(seeds, key=lambda row: float(row["nll_image"]))
    assert folder.name == f"01_{chosen['trial_id']}"


def test_the_rows_and_the_printed_summary_match_the_table(confirmed: Confirmed) -> None:
    rows = confirmation.rows(confirmed.output, NAME)
    assert [(row["kind"], row["config_id"], row["seed"]) for row in rows] == [
        (row["kind"], row["config_id"], int(row["seed"]) if row["seed"] else None) for row in confirmed.table]
    assert "confirmation: 2 configuration(s) x 2 seeds (1, 2)" in confirmed.said


def test_the_confirmation_is_also_a_typed_table(confirmed: Confirmed) -> None:
    table = tables.read(confirmed.output / tables.FOLDER / "confirmation.parquet")
    assert table.column("kind").to_pylist() == [row["kind"] for row in confirmed.table]
    assert table.schema.field("seed").type == pa.int64() and table.schema.field("test/nll_image").type == pa.float64()
    assert table.column("test/nll_image").to_pylist() == pytest.approx(
        [float(row["test/nll_image"]) for row in confirmed.table])


def test_table1_of_the_study_reads_the_seeds_spread_and_the_search_trials(confirmed: Confirmed,
                                                                          tmp_path: Path) -> None:
    """`python -m farm_sweep.table1 --study`: a line per confirmed configuration, named apart by its learning
    rate; the test cells are mean ± std over the seeds, the validation cells the search trial's own values."""
    out = tmp_path / "table1.md"
    assert table1_command.main(["--study", str(confirmed.output.parent / "study.yaml"), "--output",
                                str(confirmed.output), "--out", str(out)]) == 0
    test_part, valid_part = out.read_text().split("### Validation split")
    evaluation = tables.read(confirmed.output / tables.FOLDER / "evaluation.parquet").to_pylist()
    for lr in LRS:
        seeds = [row for row in seed_rows(confirmed.table) if float(row["param.lr"]) == lr]
        l2 = [float(row["test/inpaint/best/single/l2"]) for row in seeds]
        (line,) = [line for line in test_part.splitlines() if line.startswith(f"| MADE (k = 1) baseline, lr = {lr} ")]
        assert f"| {statistics.mean(l2):.4f} ± {statistics.stdev(l2):.4f} |" in line and line.endswith(" | 2 |")
        (trial,) = [row for row in confirmed.search if float(row["param.lr"]) == lr]
        (found,) = [row for row in evaluation if row["trial_id"] == trial["trial_id"]]
        (line,) = [line for line in valid_part.splitlines() if line.startswith(f"| MADE (k = 1) baseline, lr = {lr} ")]
        assert f"| {found['l2']:.4f} |" in line and line.endswith(" | 1 |")
    assert "(0." not in test_part  # digits: the paper has no values to compare with
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")  # the test split's figure beside it


def test_table1_rows_are_named_with_their_lambda_and_compared_with_the_paper_row_of_their_kind() -> None:
    lines = table1_report._lines({
        "a": {"num_orderings": 1, "loss": "mc"},
        "b": {"num_orderings": 8, "loss": "ensemble", "divergence": "kl", "divergence_weight": 100.0},
        "c": {"num_orderings": 8, "loss": "ensemble", "divergence": "kl", "divergence_weight": 0.3},
        "d": {"num_orderings": 8, "loss": "ensemble", "divergence": "jsd", "divergence_weight": 0.3}},
        ["evidence_weighted", "best_evidence"], paper=True)
    named = {(line.config_id, line.fill): line for line in lines}
    assert len(lines) == 7 and named["a", "evidence_weighted"].label == "MADE (k = 1) baseline"
    paper_kl = table1_report.PAPER["FARM + MADE (k = 8) + FARM loss + KL"]
    assert named["b", "best_evidence"].label == ("FARM + MADE (k = 8) + FARM loss + KL, λ = 100 (the paper's λ), "
                                                 "`best_evidence` (the paper code's fill)")
    assert named["b", "best_evidence"].paper == named["c", "evidence_weighted"].paper == paper_kl
    assert named["c", "evidence_weighted"].label.startswith("FARM + MADE (k = 8) + FARM loss + KL, λ = 0.3, ")
    assert named["d", "evidence_weighted"].paper is None
    cells = table1_report.Measured(3, {"best/l2": (0.06, 0.001), "average/l2": (0.07, 0.001)})
    assert table1_report._cell(cells, "best/l2", 0.0641) == "**0.0600 ± 0.0010** (0.0641)"
    assert table1_report._cell(cells, "average/l2", 0.0641) == "0.0700 ± 0.0010 (0.0641)"


# ------------------------------------------------------------------ the plan and the table, without Ray


def test_the_plan_takes_distinct_completed_configurations_and_seeds_the_search_did_not_use(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "name": "plan", "fixed": {"dataset": "digits", "hidden_sizes": [16], "epochs": 1}, "trials": 4,
        "search_space": {"parameters": {"lr": {"distribution": "categorical", "choices": [0.02, 0.01, 0.005]},
                                        "seed": {"distribution": "categorical", "choices": [0, 1, 3, 4]}}},
        "confirm": {"top": 3, "seeds": 3}}))
    rows = [{"trial_id": "a", "status": "completed", "nll_image": 30.0, "param.lr": 0.01, "param.seed": 0},
            {"trial_id": "b", "status": "completed", "nll_image": 29.0, "param.lr": 0.01, "param.seed": 1},
            {"trial_id": "c", "status": "pruned", "nll_image": 20.0, "param.lr": 0.02, "param.seed": 3},
            {"trial_id": "d", "status": "completed", "nll_image": 31.0, "param.lr": 0.005, "param.seed": 4}]
    study = load_study(path)
    assert "  confirm: the 3 best configuration(s) x 3 fresh seeds each, evaluated on the test split" in plan_lines(
        study, tmp_path, "sqlite:///unused", "sqlite:///unused", None)
    plan = confirmation.make_plan(study, rows)
    assert [(c.search_rank, c.config_id, c.params) for c in plan.configurations] == [
        (1, "b", {"lr": 0.01}), (2, "d", {"lr": 0.005})]  # a repeats b's configuration; c did not complete
    assert plan.seeds == (2, 5, 6)
    assert plan.points()[0] == {"search_rank": 1, "config_id": "b", "seed": 2, "lr": 0.01}


def test_aggregates_count_completed_seeds_only() -> None:
    def seed(rank: int, number: int, status: str, nll: float | None) -> dict[str, Any]:
        return {"kind": "seed", "search_rank": rank, "config_id": f"c{rank}", "seed": number, "n": None,
                "trial_id": f"t{rank}{number}", "status": status, "nll_image": nll, "test/nll_image": nll and nll + 1,
                "checkpoint": f"ck{rank}{number}", "param.lr": 0.01 * rank}
    from farm_sweep.sweep.confirmation_table import best_confirmed, summary, table

    rows = table([seed(2, 1, "completed", 20.0), seed(1, 1, "completed", 30.0), seed(1, 2, "failed", None),
                  seed(2, 2, "completed", 24.0), seed(1, 3, "completed", 32.0)])
    assert [(row["kind"], row["search_rank"], row["seed"]) for row in rows] == [
        ("seed", 1, 1), ("seed", 1, 2), ("seed", 1, 3), ("mean", 1, None), ("std", 1, None),
        ("seed", 2, 1), ("seed", 2, 2), ("mean", 2, None), ("std", 2, None)]
    mean, std = rows[3], rows[4]
    assert (mean["n"], mean["nll_image"], std["nll_image"]) == (2, 31.0, pytest.approx(2 ** 0.5))
    assert {row["confirmed_rank"] for row in rows[:5]} == {2} and {row["confirmed_rank"] for row in rows[5:]} == {1}
    assert [row["trial_id"] for row in best_confirmed(rows, 2)] == ["t21", "t11"]
    printed = "\n".join(summary(rows))
    assert "22.000 ± 2.828" in printed and "31.000 ± 1.414" in printed and "seed 2: - / - (failed)" in printed


def test_a_journaled_seed_run_is_replayed_under_the_confirmation_run(tmp_path: Path) -> None:
    """A seed's run that the store refused to create is created by the replay under the confirmation run, where
    --resume and the table look for it, not under the study's parent run."""
    study = tracking.start("journal", tmp_path, tracking.default_uri(tmp_path), {}, [], "a journal test")
    stage = study.stage("confirmation", {"seeds": [1, 2]})
    stage.journal_call("_child_run", ("t1", "rank1_seed1", {"lr": 0.01}, {"farm.seed": 1}), {}, OSError("down"))
    assert study.replay() == 0
    seed_run = stage.find_child("t1")
    assert seed_run is not None and study.find_child("t1") is None
    assert study.stage_of("confirmation").parent_run_id == stage.parent_run_id != study.parent_run_id
