"""farm_sweep.export.predict for FARM+PixelCNN++ (FARM+MADE: tests/test_mlflow_model.py, on a real study's export):
per-image likelihoods against the training task's, inpainting that keeps the evidence, exact samplers that agree,
and images refused with a message naming the expected shape."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from farm_sweep.export import predict
from farm_sweep.pixelcnn.network import PixelCNNConfig
from farm_sweep.pixelcnn.task import FarmPixelCNNWithEma, likelihood_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def target() -> predict.ImageModel:
    """A tiny FARM+PixelCNN++ with a weight average that differs from its weights."""
    torch.manual_seed(0)
    config = PixelCNNConfig(channels=3, filters=8, resnets_per_stage=1, stages=2, mixtures=2)
    model = FarmPixelCNNWithEma(config, (0, 7), "shared", ema_decay=0.5).eval()
    model.ema.expect_step()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return predict.image_model(model, 8, 8)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return torch.randint(0, 256, (5, 3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8).numpy()


def test_per_image_nll_averages_to_the_tasks_likelihood_with_averaged_weights(target, images) -> None:
    answer = predict.nll(target, images)
    with target.model.averaged() as averaged:
        expected = likelihood_metrics(averaged, torch.from_numpy(images))
    assert answer["nll_image"].shape == (5,)
    assert answer["nll_image"].mean() == pytest.approx(expected["nll_image"], rel=1e-6)
    np.testing.assert_allclose(answer["bpd"], answer["nll_image"] / (3 * 64 * math.log(2)))


def test_inpainting_keeps_the_evidence(target, images) -> None:
    answer = predict.inpaint(target, images, "average", "evidence_weighted", seed=2)
    hole = answer["hole"]
    assert hole.shape == (5, 8, 8) and hole.any() and not hole.all()
    assert answer["images"].dtype == np.uint8
    evidence = np.broadcast_to(~hole[:, None], images.shape)
    np.testing.assert_array_equal(answer["images"][evidence], images[evidence])
    assert (answer["nll_hole_exact"] > 0).all() and (answer["nll_hole"] > 0).all()


def test_fixed_point_to_the_end_is_the_sequential_sample(target) -> None:
    exact = predict.sample(target, 3, "fixed_point", None, seed=4)
    sequential = predict.sample(target, 3, "sequential", None, seed=4)
    assert exact["images"].shape == (3, 3, 8, 8) and exact["images"].dtype == np.uint8
    np.testing.assert_array_equal(exact["images"], sequential["images"])


@pytest.mark.parametrize(("bad", "message"), [
    (np.zeros((2, 8, 8)), r"shape \[2, 8, 8\]; this model takes .* \(N, 3, 8, 8\); reshape them"),
    (np.full((1, 3, 8, 8), 300), "whole numbers 0..255"),
    (np.full((1, 3, 8, 8), 0.5), "whole numbers 0..255"),
])
def test_images_of_another_shape_or_range_are_refused(target, bad, message) -> None:
    with pytest.raises(ValueError, match=message):
        predict.nll(target, bad)
