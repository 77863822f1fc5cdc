"""Study and search-space files: schema errors name file, field and reason; the define-by-run space."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from farm_sweep.sweep import runner as run
from farm_sweep.sweep.search_space import OPTUNA_TRIAL_KEY
from farm_sweep.sweep.study import StudyError, load_study

ROOT = Path(__file__).resolve().parents[1]
SPACE = {"parameters": {
    "lr": {"distribution": "log_float", "low": 1e-4, "high": 1e-1},
    "divergence": {"distribution": "categorical", "choices": ["none", "kl", "jsd"]},
    "divergence_weight": {"distribution": "log_float", "low": 1e-3, "high": 1e3, "when": {"divergence": ["kl", "jsd"]}},
    "hidden_sizes": {"distribution": "categorical", "choices": [[32], [32, 32]]},
    "epochs": 2,
}}
STUDY = {"name": "tiny", "search_space": "space.yaml", "fixed": {"dataset": "digits"}, "trials": 3}


def write_study(folder: Path, study: dict | None = None, space: dict | None = None) -> Path:
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE if space is None else space, sort_keys=False))
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY if study is None else study, sort_keys=False))
    return path


def error_of(folder: Path, study: dict | None = None, space: dict | None = None) -> StudyError:
    with pytest.raises(StudyError) as caught:
        load_study(write_study(folder, study, space))
    return caught.value


@pytest.mark.parametrize("path", sorted((ROOT / "studies").rglob("*.yaml")),
                         ids=lambda p: str(p.relative_to(ROOT / "studies")))
def test_every_shipped_study_is_valid(path: Path) -> None:
    study = load_study(path)
    assert study.trials >= 1 and study.space.parameters


def test_quickstart_meets_its_brief() -> None:
    study = load_study(ROOT / "studies" / "quickstart.yaml")
    assert study.space.fixed["dataset"] == "digits" and study.trials >= 8 and study.pruner.type != "none"


def test_a_valid_study_loads_with_defaults(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path))
    assert (study.name, study.trials, study.seed, study.sampler.type, study.pruner.type) == ("tiny", 3, 0, "tpe",
                                                                                            "median")
    assert study.space.fixed == {"dataset": "digits", "epochs": 2}
    assert [p.name for p in study.space.parameters] == ["lr", "divergence", "divergence_weight", "hidden_sizes"]


@pytest.mark.parametrize(("study_change", "space_change", "file", "field", "reason"), [
    ({"trails": 3}, None, "study.yaml", "trails", "unknown key"),
    ({"trials": "many"}, None, "study.yaml", "trials", "must be an integer"),
    ({"trials": 0}, None, "study.yaml", "trials", "must be an integer >= 1"),
    ({"pruner": {"type": "median", "n_warmup_step": 1}}, None, "study.yaml", "pruner.n_warmup_step", "unknown key"),
    ({"pruner": {"type": "percentile"}}, None, "study.yaml", "pruner.percentile", "required"),
    ({"pruner": "patience"}, None, "study.yaml", "pruner.type", "choose one of"),
    ({"resources": {"cpus": 0}}, None, "study.yaml", "resources.cpus", "must be positive"),
    ({"fixed": {"dataset": "digits", "num_orderings": 16}}, None, "study.yaml", "fixed.num_orderings",
     "more than ordering_family"),
    ({"fixed": {"dataset": "digits", "lr": 1e-3}}, None, "study.yaml", "fixed.lr", "is sampled"),
    ({"fixed": {"datasets": "digits"}}, None, "study.yaml", "fixed.datasets", "unknown key; did you mean 'dataset'?"),
    ({"enqueue": [{"lr": 5.0}]}, None, "study.yaml", "enqueue[0].lr", "outside its distribution"),
    ({"evaluation": {"inpaint": {"casez": ["best"]}}}, None, "study.yaml", "evaluation.inpaint.casez",
     "unknown key; did you mean 'cases'?"),
    (None, {"parameters": {"lr": {"distribution": "log_float", "low": 0, "high": 1}}}, "space.yaml",
     "parameters.lr.low", "must be positive"),
    (None, {"parameters": {"lr": {"distribution": "gaussian", "low": 0, "high": 1}}}, "space.yaml",
     "parameters.lr.distribution", "choose one of"),
    (None, {"parameters": {"lr": {"distribution": "float", "low": 1, "high": 0.5}}}, "space.yaml",
     "parameters.lr", "must be below"),
    (None, {"parameters": {"divergence_weight": {"distribution": "float", "low": 0, "high": 1,
                                                 "when": {"divergence": ["kl"]}}}},
     "space.yaml", "parameters.divergence_weight.when.divergence", "defined above"),
    (None, {"parameters": {"num_orderings": {"distribution": "categorical", "choices": [2, 9]}}}, "space.yaml",
     "parameters.num_orderings", "more than ordering_family"),
    (None, {"parameters": {"lr": {"distribution": "float", "low": -1.0, "high": 0.1}}}, "space.yaml",
     "parameters.lr", "must be positive"),
])
def test_bad_input_names_file_field_and_reason(tmp_path: Path, study_change: dict | None,
                                               space_change: dict | None, file: str, field: str,
                                               reason: str) -> None:
    error = error_of(tmp_path, {**STUDY, **(study_change or {})}, space_change)
    assert Path(error.file).name == file and error.field == field and reason in error.reason, str(error)


def test_missing_data_is_reported_before_anything_starts(tmp_path: Path) -> None:
    study = {**STUDY, "fixed": {"dataset": "binarized_mnist", "data_dir": str(tmp_path / "nowhere")}}
    error = error_of(tmp_path, study)
    assert error.field == "fixed.dataset" and "cannot find" in error.reason


def test_grid_needs_discrete_unconditional_parameters(tmp_path: Path) -> None:
    error = error_of(tmp_path, {**STUDY, "sampler": "grid"})
    assert error.field == "sampler.type" and "lr is log_float" in error.reason
    space = {"parameters": {"num_orderings": {"distribution": "categorical", "choices": [1, 2]},
                            "num_masks": {"distribution": "int", "low": 1, "high": 3}}}
    study = load_study(write_study(tmp_path, {**STUDY, "sampler": "grid", "trials": None}, space))
    assert study.trials == 6


def test_bad_yaml_and_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("name: [unclosed")
    with pytest.raises(StudyError, match="not valid YAML"):
        load_study(path)
    with pytest.raises(StudyError, match="cannot read"):
        load_study(tmp_path / "absent.yaml")


def test_define_by_run_samples_conditionals_and_list_choices(tmp_path: Path) -> None:
    space = load_study(write_study(tmp_path)).space
    optuna_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(30):
        trial = optuna_study.ask()
        values = space(trial)
        optuna_study.tell(trial, 0.0)
        assert ("divergence_weight" in values) == (values["divergence"] != "none")
        assert values["hidden_sizes"] in ([32], [32, 32]) and values[OPTUNA_TRIAL_KEY] == trial.number
        seen.append(values["divergence"])
    assert set(seen) == {"none", "kl", "jsd"}


def test_an_enqueued_list_choice_reaches_the_trial_as_its_list(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path, {**STUDY, "enqueue": [{"hidden_sizes": [32, 32], "divergence": "none"}]}))
    optuna_study = optuna.create_study()
    optuna_study.enqueue_trial(study.space.as_optuna_point(study.enqueue[0]))
    values = study.space(optuna_study.ask())
    assert values["hidden_sizes"] == [32, 32] and values["divergence"] == "none"


def test_cli_bad_file_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(tmp_path, {**STUDY, "trials": -1})
    output = tmp_path / "out"
    assert run.main([str(path), "--output", str(output)]) == 2
    message = capsys.readouterr().err
    assert "study.yaml" in message and "trials" in message and ">= 1" in message
    assert not output.exists()


def test_cli_dry_run_prints_the_plan_and_starts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    assert run.main([str(write_study(tmp_path)), "--output", str(output), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    for expected in ("3 trials", "divergence_weight: log_float", "when divergence in", "sampler: tpe",
                     "pruner: median", "resources per trial", "mlflow: sqlite"):
        assert expected in printed
    assert not output.exists()


def test_resume_without_an_interrupted_study_exits_2(tmp_path: Path) -> None:
    assert run.main([str(write_study(tmp_path)), "--output", str(tmp_path / "out"), "--resume"]) == 2
