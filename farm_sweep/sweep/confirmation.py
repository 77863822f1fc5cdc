"""The confirmation stage of a study (`confirm: {top: K, seeds: N}`): how a search becomes a claim.

After the search, the K best configurations (distinct sets of sampled parameters, ranked by their best completed
trial's validation nll_image) are trained again with N fresh seeds each, as the trials of a second Tune
experiment (<output>/ray/<study>.confirmation/): the same resources, retries and early stopping as the search,
no pruning. Each seed's model is evaluated on the test split (farm_sweep.evaluation.end_of_trial.evaluate_on_test:
whole-image nll_image and, with an `evaluation` section, its inpainting on the test split and its sampling).

Seeds: the N smallest non-negative integers that no trial of the search trained with (so a seed's luck in the
search cannot follow its configuration), the same N for every configuration (so configurations are compared on
equal seeds). The plan (configurations, seeds) is written to <output>/confirmation_plan.json once the search has
finished and is what `--resume` continues; it also marks the search as finished, so `--resume` goes straight to
the confirmation.

Results: confirmation.csv (farm_sweep.sweep.confirmation_table; `rows` gives its rows), and in MLflow a run
`confirmation` nested under the study's parent run (the plan as params; per configuration the mean and std of
every measure; the table; tag farm.stage) with one run per seed nested under it, tagged farm.config_id,
farm.search_rank and farm.seed (MLflow's runs table shows them under the confirmation run, and its Group by
on farm.config_id gathers each configuration's seeds). The study's parent run gets the table and the best
confirmed configuration, and ends when the confirmation does. confirmation.png, beside the table and logged with
it, shows the search's best trials and each confirmed configuration's seeds (mean ± std, validation and test).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.experiment import Trial

from farm_sweep import figures
from farm_sweep.sweep import confirmation_table, experiment, tables, tracking, tune_state
from farm_sweep.sweep.confirmation_table import CONFIRMATION_FILE, MEAN, STD
from farm_sweep.sweep.results_table import METRIC, write_table
from farm_sweep.sweep.study import Study
from farm_sweep.sweep.trial import TrialContext, run_name, run_tracked
from farm_sweep.training.config import TrainConfig

PLAN_FILE = "confirmation_plan.json"
FIGURE_FILE = "confirmation.png"
STAGE = "confirmation"  # the MLflow run's name and farm.stage tag
SCOPE = "confirmation/"  # the prefix of this experiment's files in tune_state.json
POINT_KEY = "point"  # a confirmation trial's Tune config: {point: {search_rank, config_id, seed, parameters...}}
RANK_KEY, CONFIG_KEY = "search_rank", "config_id"


@dataclass(frozen=True)
class Configuration:
    search_rank: int
    config_id: str  # the search trial whose configuration this is
    nll_image: float  # that trial's validation value
    params: dict[str, Any]  # its sampled parameters, without seed


@dataclass(frozen=True)
class Plan:
    seeds: tuple[int, ...]
    configurations: tuple[Configuration, ...]

    def points(self) -> list[dict[str, Any]]:
        """One point per (configuration, seed): its labels, seed and parameters."""
        return [{RANK_KEY: c.search_rank, CONFIG_KEY: c.config_id, "seed": seed, **c.params}
                for c in self.configurations for seed in self.seeds]


def folder(output: Path, study_name: str) -> Path:
    """The confirmation's Tune experiment folder (beside the search's <output>/ray/<study>)."""
    return output / experiment.RAY_FOLDER / f"{study_name}.{STAGE}"


def planned(output: Path) -> bool:
    """Whether the search has finished and the confirmation was planned (what --resume continues)."""
    return (output / PLAN_FILE).is_file()


def follows(study: Study, output: Path, search_rows: list[dict[str, Any]]) -> bool:
    """Whether a confirmation follows the finished search: one was planned, or the study asks for one and a
    trial completed."""
    return planned(output) or (study.confirm is not None
                               and any(row["status"] == "completed" for row in search_rows))


def make_plan(study: Study, search_rows: list[dict[str, Any]]) -> Plan:
    """The `confirm.top` best distinct configurations among the completed trials, and the fresh seeds."""
    assert study.confirm is not None
    chosen: dict[str, Configuration] = {}
    completed = [row for row in search_rows if row["status"] == "completed" and row[METRIC] is not None]
    for row in sorted(completed, key=lambda row: float(row[METRIC])):
        params = {key.removeprefix("param."): value for key, value in row.items()
                  if key.startswith("param.") and key != "param.seed"}
        identity = json.dumps(params, sort_keys=True)
        if identity not in chosen and len(chosen) < study.confirm.top:
            chosen[identity] = Configuration(len(chosen) + 1, row["trial_id"], float(row[METRIC]), params)
    used = {row.get("param.seed", study.space.fixed.get("seed", TrainConfig.seed)) for row in search_rows}
    seeds = [seed for seed in range(len(used) + study.confirm.seeds) if seed not in used][:study.confirm.seeds]
    return Plan(tuple(seeds), tuple(chosen.values()))


def load_plan(output: Path) -> Plan:
    document = json.loads((output / PLAN_FILE).read_text())
    return Plan(tuple(document["seeds"]), tuple(Configuration(**c) for c in document["configurations"]))


def _save_plan(output: Path, plan: Plan) -> Plan:
    staging = output / f".{PLAN_FILE}.tmp"
    staging.write_text(json.dumps(asdict(plan), indent=1))
    os.replace(staging, output / PLAN_FILE)
    return plan


def run(study: Study, output: Path, tracker: tracking.Tracker, search_rows: list[dict[str, Any]], *,
        resume: bool = False) -> None:
    """Run (or with `resume`, continue) the confirmation of the finished search (its trials: `search_rows`): write
    confirmation.csv and log it; end the study's parent run (KILLED when a signal stopped it: --resume continues
    its unfinished seeds)."""
    plan = load_plan(output) if planned(output) else _save_plan(output, make_plan(study, search_rows))
    print(f"{STAGE}: {len(plan.configurations)} configuration(s) x {len(plan.seeds)} seeds "
          f"({', '.join(map(str, plan.seeds))}), each evaluated on the test split", flush=True)
    stage = tracker.stage(STAGE, _settings(plan))
    location = folder(output, study.name)
    tuner = _tuner(study, output, location, stage, plan, resume)
    tune_state.record(location, output, SCOPE)
    tuner.fit()
    tune_state.record(location, output, SCOPE)
    seeds = seed_rows(location, stage, output, plan)
    table = confirmation_table.table(seeds)
    files = [write_table(table, output / CONFIRMATION_FILE),
             tables.write(output / tables.FOLDER, "confirmation", table, study.name)]
    unfinished = [row for row in seeds if row["status"] == "interrupted"]
    if unfinished:
        for row in unfinished:
            if row["mlflow_run_id"]:
                stage.end_trial(row["mlflow_run_id"], "interrupted")
        stage.end_trial(stage.parent_run_id, "interrupted")
        tracker.interrupt_study(files)
    else:
        files.append(figures.confirmation_figure(search_rows, table, output / FIGURE_FILE))
        files += figures.parameter_figures(study.space.scales(), search_rows, table, output)
        tracker.finish_confirmation(stage.parent_run_id, _aggregates(table), _best(table), files)
    tracker.replay()


def _settings(plan: Plan) -> dict[str, Any]:
    """The confirmation run's parameters."""
    return {"top": len(plan.configurations), "seeds": list(plan.seeds), "split": "test",
            "configurations": [asdict(c) for c in plan.configurations]}


def _tuner(study: Study, output: Path, location: Path, stage: tracking.Tracker, plan: Plan,
           resume: bool) -> tune.Tuner:
    context = TrialContext(dict(study.space.fixed), stage, dict(study.evaluation), on_test=True)
    function = experiment.trainable(run_seed, context, study)
    if resume and tune.Tuner.can_restore(location):
        experiment.quiet_deleted_checkpoints()
        return tune.Tuner.restore(str(location), trainable=function)
    return tune.Tuner(
        function, param_space={POINT_KEY: tune.grid_search(plan.points())},  # in order, each once
        tune_config=tune.TuneConfig(metric=METRIC, mode=experiment.MODE,
                                    max_concurrent_trials=study.max_concurrent_trials, reuse_actors=True,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=experiment.run_config(study, output, location.name, stage, scope=SCOPE, label=_point))


def _point(config: dict[str, Any]) -> dict[str, Any]:
    return config[POINT_KEY]


def trial_name(trial: Trial) -> str:
    """`rank<search rank>_seed<seed>`: the Ray trial folder of a seed, and the end of its MLflow run's name (its
    parameters, then this)."""
    point = _point(trial.config)
    return f"rank{point[RANK_KEY]}_seed{point['seed']}"


def run_seed(config: dict[str, Any], context: TrialContext) -> None:
    """The Tune trainable of one (configuration, seed): train, log, report; evaluate on the test split."""
    point = _point(config)
    params = {name: value for name, value in point.items() if name not in (RANK_KEY, CONFIG_KEY)}
    tags = {"farm.config_id": point[CONFIG_KEY], "farm.search_rank": point[RANK_KEY], "farm.seed": point["seed"]}
    run_tracked(TrainConfig.from_dict({**context.fixed, **params}), context,
                run_name(params, tune.get_context().get_trial_name()), tags)


def seed_rows(location: Path, stage: tracking.Tracker, output: Path, plan: Plan) -> list[dict[str, Any]]:
    """One row per (configuration, seed) of the plan: from the experiment state Tune saved last (as the search's
    rows), and `interrupted` with 0 epochs for a seed Tune has not started yet."""
    rows = []
    if tune.Tuner.can_restore(location):
        analysis = tune.ExperimentAnalysis(str(location))
        for trial, result in zip(analysis.trials, tune.ResultGrid(analysis)):
            point = _point(trial.config)
            rows.append({**_labels(point), "trial_id": trial.trial_id,
                         **experiment.outcome(trial, result, stage, output), **experiment.evaluation_metrics(trial),
                         **_params(point)})
    started = {(row[RANK_KEY], row["seed"]) for row in rows}
    waiting = {"trial_id": "", "status": "interrupted", "epochs": 0, METRIC: None, "mlflow_run_id": "",
               "checkpoint": ""}
    return rows + [{**_labels(point), **waiting, **_params(point)}
                   for point in plan.points() if (point[RANK_KEY], point["seed"]) not in started]


def _labels(point: dict[str, Any]) -> dict[str, Any]:
    return {"kind": confirmation_table.SEED, RANK_KEY: point[RANK_KEY], CONFIG_KEY: point[CONFIG_KEY],
            "seed": point["seed"], "n": None}


def _params(point: dict[str, Any]) -> dict[str, Any]:
    return {f"param.{k}": v for k, v in point.items() if k not in (RANK_KEY, CONFIG_KEY, "seed")}


def rows(output: Path, study_name: str) -> list[dict[str, Any]]:
    """The rows of confirmation.csv (confirmation_table.table), from the plan and Tune's state; [] when no
    confirmation was planned."""
    if not planned(output):
        return []
    stage = tracking.load(output).stage_of(STAGE)
    return confirmation_table.table(seed_rows(folder(output, study_name), stage, output, load_plan(output)))


def _aggregates(table: list[dict[str, Any]]) -> dict[str, float]:
    """The confirmation run's metrics: `rank<search rank>/<measure>/mean` and `.../std` per configuration."""
    return {f"rank{row[RANK_KEY]}/{column}/{row['kind']}": value for row in table if row["kind"] in (MEAN, STD)
            for column, value in row.items() if confirmation_table.is_measure(column) and value is not None}


def _best(table: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best confirmed configuration's id and its mean and std of every measure, for the parent run."""
    best = [row for row in table if row["kind"] in (MEAN, STD) and row["confirmed_rank"] == 1]
    if not best:
        return None
    return {"config_id": best[0][CONFIG_KEY], **{f"confirmed/{column}/{row['kind']}": value for row in best
                                                  for column, value in row.items()
                                                  if confirmation_table.is_measure(column) and value is not None}}
