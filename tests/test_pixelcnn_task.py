"""FARM+PixelCNN++ through the generic training loop: it learns, resumes exactly, keeps its weight average."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import farm_sweep.training.loop as training
from farm_sweep.pixelcnn.task import PixelCNNTask, WeightAverage, likelihood_metrics
from farm_sweep.training import checkpoint
from farm_sweep.training.config import ConfigError, TrainConfig
from farm_sweep.training.loop import build_model, load_model, train

TINY = dict(dataset="cifar10", model="pixelcnn", ordering_family="paper", num_orderings=2, filters=4,
            resnets_per_stage=1, stages=2, mixtures=1, dropout=0.0, batch_size=16, max_train_examples=128,
            epochs=2, lr=1e-2)
VALID_IMAGES = 48


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def small_valid_split(monkeypatch):
    """Validation after every epoch on the first VALID_IMAGES images only: the test is about training."""
    load_split = training.load_split

    def first_images(config, split):
        data = load_split(config, split)
        return dataclasses.replace(data, images=data.images[:VALID_IMAGES]) if split == "valid" else data

    monkeypatch.setattr(training, "load_split", first_images)


def run(config, **kwargs):
    return list(train(config, progress=None, **kwargs))


@pytest.mark.parametrize("loss", ["mc", "ensemble"])
def test_training_lowers_validation_nll(loss):
    config = TrainConfig(**TINY, loss=loss)
    valid = training.load_split(config, "valid").images
    untrained = PixelCNNTask(config).evaluate(build_model(config, 32, 32, 3).eval(), valid)
    history = run(config)
    assert history[-1]["nll_image"] < untrained["nll_image"] - 100  # nats per image
    assert history[-1]["bpd"] < untrained["bpd"] - 0.05
    assert {"bpd_ordering_0", "bpd_ordering_1", "main_loss"} <= set(history[-1])


def test_resume_is_exact_with_dropout_divergence_and_weight_average(tmp_path):
    config = TrainConfig(**{**TINY, "batch_size": 4, "max_train_examples": 12, "dropout": 0.3},
                         loss="mc", resample_every=1, divergence="jsd", divergence_weight=0.5, ema_decay=0.9)
    straight = run(config, checkpoint_dir=tmp_path / "straight")
    run(TrainConfig(**{**config.to_dict(), "epochs": 1}), checkpoint_dir=tmp_path / "resumed")
    resumed = run(config, checkpoint_dir=tmp_path / "resumed")
    assert [m["epoch"] for m in resumed] == [2]
    for name in ("train_loss", "divergence", "nll_image", "bpd_ordering_1"):
        assert resumed[-1][name] == straight[-1][name], name
    first, second = (load_file(checkpoint.checkpoints(tmp_path / run_)[-1] / "model.safetensors")
                     for run_ in ("straight", "resumed"))
    assert any(name.startswith("ema.") for name in first)
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


def test_weight_average_saved_restored_and_used_for_evaluation(tmp_path):
    config = TrainConfig(**{**TINY, "epochs": 1, "max_train_examples": 32}, ema_decay=0.5)
    (metrics,) = run(config, checkpoint_dir=tmp_path)
    model, _ = load_model(tmp_path / "epoch_0001")
    saved = load_file(tmp_path / "epoch_0001" / "model.safetensors")
    assert torch.equal(model.ema.nets__0__out__bias, saved["ema.nets__0__out__bias"])
    assert not torch.equal(model.ema.nets__0__out__bias, model.nets[0].out.bias)  # the average lags
    valid = training.load_split(config, "valid").images
    assert PixelCNNTask(config).evaluate(model, valid)["nll_image"] == metrics["nll_image"]
    averaged = build_model(TrainConfig(**{**config.to_dict(), "ema_decay": 0.0}), 32, 32, 3).eval()
    model.ema.copy_to(averaged)
    assert likelihood_metrics(averaged, valid)["nll_image"] == pytest.approx(metrics["nll_image"], rel=1e-6)


def test_weight_average_counts_every_optimizer_step_once():
    layer = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    average = WeightAverage(layer, decay=0.5)
    expected = 1.0
    for step in range(1, 4):
        average.absorb(layer)  # the next loss: folds the previous step in (nothing before the first)
        average.expect_step()
        with torch.no_grad():
            layer.weight.add_(1.0)  # the optimizer step
        expected = 0.5 * expected + 0.5 * (1.0 + step)
    average.absorb(layer)  # evaluation
    average.absorb(layer)  # a second evaluation adds nothing
    assert average.weight.item() == pytest.approx(expected)


@pytest.mark.parametrize("values,field", [
    ({"dataset": "digits"}, "dataset"),
    ({"ordering_family": "raster"}, "ordering_family"),
    ({"num_orderings": 9}, "num_orderings"),
    ({"causal": "zigzag"}, "causal"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"dropout": -0.1}, "dropout"),
    ({"filters": 0}, "filters"),
])
def test_bad_pixelcnn_values_name_the_field(values, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        TrainConfig(**{**TINY, **values})


def test_made_keeps_its_ordering_families():
    assert TrainConfig(num_orderings=8, ordering_family="hilbert").model == "made"
    with pytest.raises(ConfigError, match="^ordering_family: 'paper' is not allowed for model made"):
        TrainConfig(ordering_family="paper")
