"""Training: determinism, exact checkpoint/resume, every loss trains, bad values fail clearly."""

import pytest
import torch
from safetensors.torch import load_file

from farm_sweep.training import checkpoint
from farm_sweep.training.config import ConfigError, TrainConfig
from farm_sweep.training.loop import NonFiniteLossError, train

SMALL = dict(dataset="digits", hidden_sizes=(32,), batch_size=64, max_train_examples=256, epochs=3)


def run(config, **kwargs):
    return list(train(config, progress=None, **kwargs))


def weights(folder):
    return load_file(checkpoint.checkpoints(folder)[-1] / "model.safetensors")


def test_same_seed_same_result_and_another_seed_differs():
    config = TrainConfig(**SMALL, num_orderings=2, seed=1)
    first, second = run(config), run(config)
    assert [m["train_loss"] for m in first] == [m["train_loss"] for m in second]
    other = run(TrainConfig(**{**SMALL, "epochs": 1}, num_orderings=2, seed=2))
    assert other[0]["train_loss"] != first[0]["train_loss"]


@pytest.mark.parametrize("loss,divergence,num_masks,dropout", [("mc", "none", 1, None), ("ensemble", "jsd", 2, None),
                                                                ("mc", "kl", 1, 0.3)])
def test_resume_from_checkpoint_is_exact(tmp_path, loss, divergence, num_masks, dropout):
    config = TrainConfig(**SMALL, num_orderings=4, loss=loss, divergence=divergence, divergence_weight=0.5,
                         num_masks=num_masks, resample_every=2, dropout=dropout,
                         direct_connections=True)
    straight = run(config, checkpoint_dir=tmp_path / "straight")
    partial = TrainConfig(**{**config.to_dict(), "epochs": 2})
    run(partial, checkpoint_dir=tmp_path / "resumed")
    resumed = run(config, checkpoint_dir=tmp_path / "resumed")
    assert [m["epoch"] for m in resumed] == [3]
    assert resumed[-1]["train_loss"] == straight[-1]["train_loss"]
    assert resumed[-1]["nll_image"] == straight[-1]["nll_image"]
    for name, tensor in weights(tmp_path / "straight").items():
        assert torch.equal(tensor, weights(tmp_path / "resumed")[name]), name


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    config = TrainConfig(**SMALL)
    run(config, checkpoint_dir=tmp_path)
    newest = checkpoint.checkpoints(tmp_path)[-1]
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert checkpoint.latest_valid(tmp_path).name == "epoch_0002"
    assert "corrupt checkpoint" in caplog.text
    assert [m["epoch"] for m in run(config, checkpoint_dir=tmp_path)] == [3]


@pytest.mark.parametrize("loss", ["mc", "ensemble"])
def test_training_lowers_validation_nll(loss):
    config = TrainConfig(**{**SMALL, "epochs": 4, "max_train_examples": None, "lr": 3e-3},
                         num_orderings=4, loss=loss)
    history = run(config)
    assert history[-1]["nll_image"] < history[0]["nll_image"] - 2.0
    assert all(f"nll_image_ordering_{i}" in history[-1] for i in range(4))


def test_non_finite_loss_stops_with_a_clear_error():
    config = TrainConfig(**{**SMALL, "lr": 1e30, "epochs": 2})
    with pytest.raises(NonFiniteLossError, match="train_loss is"):
        run(config)


def test_progress_is_reported_per_epoch():
    lines = []
    list(train(TrainConfig(**SMALL), progress=lines.append))
    assert len(lines) == 3 and lines[0].startswith("epoch 1/3")


@pytest.mark.parametrize("values,field", [
    ({"num_orderings": 9}, "num_orderings"),
    ({"divergence_weight": -1.0}, "divergence_weight"),
    ({"lr": "fast"}, "lr"),
    ({"ordering_family": "spiral"}, "ordering_family"),
    ({"hidden": [10]}, "hidden: unknown key; did you mean .hidden_sizes."),
    ({"device": "tpu"}, "device"),
])
def test_bad_config_names_the_field(values, field):
    with pytest.raises(ConfigError, match=field):
        TrainConfig.from_dict(values)
