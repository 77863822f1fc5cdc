"""Early stopping and the learning-rate schedule: the rule, the best epoch's weights kept through resume, and
a study whose trial stops early reports its best epoch everywhere (trials.csv, Optuna, MLflow)."""

import csv
import json
import math
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file

from farm_sweep.sweep import tables, tracking
from farm_sweep.sweep.results_table import read_table
from farm_sweep.sweep.runner import run_study
from farm_sweep.sweep.study import load_study
from farm_sweep.training import checkpoint
from farm_sweep.training.config import ConfigError, TrainConfig
from farm_sweep.training.curve import main as curve_main
from farm_sweep.training.early_stopping import best_epoch, should_stop
from farm_sweep.training.loop import main as train_main
from farm_sweep.training.loop import train
from farm_sweep.training.schedule import learning_rate

SMALL = dict(dataset="digits", hidden_sizes=(32,), batch_size=64, max_train_examples=256, lr=1e-2)
NEVER_IMPROVES = {"patience": 2, "min_delta": 1e9}  # no epoch after the first counts as an improvement


def history(*values):
    return [{"nll_image": value} for value in values]


def test_best_epoch_needs_more_than_min_delta_to_move():
    assert best_epoch(history(5.0, 4.0, 4.5, 3.0)) == 4
    assert best_epoch(history(5.0, 4.0, 3.5), min_delta=0.5) == 2  # 3.5 gains exactly 0.5: not more
    assert best_epoch(history(5.0, 4.0, 3.4), min_delta=0.5) == 3


def test_should_stop_after_patience_epochs_without_improvement():
    rule = TrainConfig(early_stopping={"patience": 2}).early_stopping
    assert not should_stop(history(5.0, 4.0, 4.1), rule)
    assert should_stop(history(5.0, 4.0, 4.1, 4.2), rule)
    assert not should_stop(history(5.0, 4.0, 4.1, 4.2), None)


def test_cosine_schedule_with_warmup():
    config = TrainConfig(lr=1.0, epochs=4, lr_schedule="cosine", lr_warmup_epochs=1)
    rates = [learning_rate(config, step, steps_per_epoch=10) for step in range(40)]
    assert rates[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warm-up to lr
    assert rates[10] == pytest.approx(1.0) and rates[25] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a > b for a, b in zip(rates[10:], rates[11:]))  # then strictly annealing
    constant = TrainConfig(lr=0.3, epochs=4)
    assert {learning_rate(constant, step, 10) for step in range(40)} == {0.3}


@pytest.mark.parametrize("value,field", [({"patience": 0}, "early_stopping.patience"),
                                         ({"min_delta": 1.0}, "early_stopping"),
                                         ({"patience": 2, "min_delta": -1.0}, "early_stopping.min_delta"),
                                         (3, "early_stopping")])
def test_bad_early_stopping_is_refused_naming_the_field(value, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        TrainConfig(early_stopping=value)


def run(config, folder):
    return list(train(config, folder, progress=None))


def model_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint.checkpoints(folder)[-1] / "model.safetensors")


def test_a_run_that_stops_early_ends_with_its_best_epochs_weights(tmp_path):
    config = TrainConfig(**SMALL, epochs=10, early_stopping=NEVER_IMPROVES)
    epochs = run(config, tmp_path / "stopped")
    assert [m["epoch"] for m in epochs] == [1, 2, 3]
    last = epochs[-1]
    assert (last["final"], last["stopped_early"], last["best_epoch"]) == (True, True, 1)
    assert last["best_nll_image"] == epochs[0]["nll_image"]
    one_epoch = run(TrainConfig(**SMALL, epochs=1), tmp_path / "one")  # the same first epoch, seed and data
    for name, tensor in model_weights(tmp_path / "one").items():
        assert torch.equal(model_weights(tmp_path / "stopped")[name], tensor), name
    assert run(config, tmp_path / "stopped") == []  # a run that stopped early stays stopped
    assert one_epoch[-1]["stopped_early"] is False


def test_resuming_mid_run_keeps_the_best_weights_it_had(tmp_path):
    """Also: the cosine schedule with warm-up, dropout and direct connections resume exactly."""
    config = TrainConfig(**SMALL, epochs=10, early_stopping=NEVER_IMPROVES, lr_schedule="cosine",
                         lr_warmup_epochs=1, dropout=0.3, direct_connections=True)
    straight = run(config, tmp_path / "straight")
    interrupted = train(config, tmp_path / "resumed", progress=None)
    next(interrupted), next(interrupted)  # two epochs, then the process "dies"
    interrupted.close()
    assert (checkpoint.checkpoints(tmp_path / "resumed")[-1] / checkpoint.BEST).is_file()
    resumed = run(config, tmp_path / "resumed")
    assert [m["epoch"] for m in resumed] == [3] and resumed[-1]["best_epoch"] == 1
    for name, tensor in model_weights(tmp_path / "straight").items():
        assert torch.equal(model_weights(tmp_path / "resumed")[name], tensor), name
    assert resumed[-1]["nll_image"] == straight[-1]["nll_image"]


def test_a_trial_that_stops_early_reports_its_best_epoch_everywhere(ray_address: str, tmp_path: Path) -> None:
    document = {"name": "early", "trials": 1, "pruner": "none", "resources": {"cpus": 1},
                "fixed": {"dataset": "digits", "hidden_sizes": [16], "epochs": 6, "batch_size": 50,
                          "early_stopping": NEVER_IMPROVES},
                "search_space": {"parameters": {"lr": {"distribution": "categorical", "choices": [2e-2]}}}}
    (tmp_path / "early.yaml").write_text(yaml.safe_dump(document))
    (row,) = run_study(load_study(tmp_path / "early.yaml"), tmp_path / "out")
    assert (row["status"], row["epochs"], row["best_epoch"], row["stopped_early"]) == ("completed", 3, 1, True)
    client = MlflowClient(tracking.default_uri(tmp_path / "out"))
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("early").experiment_id])
              if tracking.TRIAL_TAG in r.data.tags]
    curve = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "nll_image")}
    assert sorted(curve) == [1, 2, 3]  # the real validation curve, every epoch
    assert row["nll_image"] == pytest.approx(curve[1])  # the trial's value is its best epoch's
    assert run.data.tags["farm.stopped_early"] == "True" and run.data.tags["farm.best_epoch"] == "1"
    (trial,) = optuna.load_study(study_name="early", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}").trials
    assert trial.value == pytest.approx(curve[1])
    (csv_row,) = read_table(tmp_path / "out" / "trials.csv")
    assert (csv_row["best_epoch"], csv_row["stopped_early"]) == ("1", "True")
    folder = tmp_path / "out" / tables.FOLDER
    epochs = tables.read(folder / "epochs.parquet").to_pylist()
    assert {row["epoch"]: row["nll_image"] for row in epochs} == pytest.approx(curve)  # the last epoch's own value
    (table_row,) = tables.read(folder / "trials.parquet").to_pylist()
    assert (table_row["best_epoch"], table_row["stopped_early"]) == (1, True)
    assert (table_row["nll_image"], table_row["last_nll_image"]) == pytest.approx((curve[1], curve[3]))


def test_train_command_writes_the_curve_and_resumes_only_when_asked(tmp_path, capsys):
    config = json.dumps({**SMALL, "hidden_sizes": [32], "epochs": 3})
    folder, curve = tmp_path / "run", tmp_path / "curve.csv"
    assert train_main(["--config", config, "--checkpoint-dir", str(folder), "--curve", str(curve)]) == 0
    assert [row["epoch"] for row in csv.DictReader(curve.open())] == ["1", "2", "3"]
    assert curve.with_suffix(".png").stat().st_size > 0
    assert train_main(["--config", config, "--checkpoint-dir", str(folder)]) == 2  # never overwrites a run
    assert "pass --resume to continue it" in capsys.readouterr().err
    longer = json.dumps({**SMALL, "hidden_sizes": [32], "epochs": 4})
    assert train_main(["--config", longer, "--checkpoint-dir", str(folder), "--resume", "--curve", str(curve)]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 4
    assert len(list(csv.DictReader(curve.open()))) == 4
    assert curve_main([f"run a={curve}", f"run b={curve}", "--out", str(tmp_path / "both.png")]) == 0
    assert (tmp_path / "both.png").read_bytes()[:4] == b"\x89PNG"
    assert train_main(["--config", config, "--checkpoint-dir", str(tmp_path / "new"), "--resume"]) == 2
    with pytest.raises(SystemExit) as exit_:
        train_main(["--config", "[1, 2]"])
    assert exit_.value.code == 2


def test_train_command_reports_the_test_mixture_and_each_ordering_alone(tmp_path, capsys):
    config = json.dumps({**SMALL, "num_orderings": 3, "ordering_family": "random", "epochs": 1})
    assert train_main(["--config", config, "--checkpoint-dir", str(tmp_path / "run"), "--test"]) == 0
    summary = json.loads(capsys.readouterr().out)
    per_ordering = summary["test_nll_image_per_ordering"]
    assert len(per_ordering) == 3 and len(set(per_ordering)) == 3
    # -log (1/k) sum_i p_i(x) <= (1/k) sum_i -log p_i(x) (Jensen) and <= min_i -log p_i(x) + log k, per image
    assert summary["test_nll_image"] <= sum(per_ordering) / 3 + 0.01
    assert summary["test_nll_image"] <= min(per_ordering) + math.log(3) + 0.01
    assert not any(key.startswith("test_nll_image_ordering_") for key in summary)
