"""Samplers: the fixed-point sampler reproduces sequential samples bit for bit; multi_order's schedule."""

import math

import pytest
import torch

from farm_sweep.made.network import FarmMADE
from farm_sweep.made.sampling import curve_settings, sample, speed_quality_curve
from farm_sweep.orderings import make_orderings
from farm_sweep.speed_quality import CURVE_FIELDS, write_speed_quality


def random_model(k: int, height: int, width: int, scale: float) -> FarmMADE:
    torch.manual_seed(0)
    model = FarmMADE(make_orderings("raster", k, height, width), [64, 64], seed=1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, scale)
    return model.eval()


class Spy(torch.nn.Module):
    """Wraps a model and records the input of every network evaluation."""

    def __init__(self, model: FarmMADE) -> None:
        super().__init__()
        self.model, self.orders, self.dim, self.k, self.inputs = model, model.orders, model.dim, model.k, []

    def forward(self, x: torch.Tensor, orderings: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return self.model(x, orderings)


@pytest.mark.parametrize("scale", [0.3, 1.0])
def test_fixed_point_reproduces_sequential_bit_for_bit_in_fewer_evaluations(scale):
    model = random_model(k=2, height=8, width=8, scale=scale)
    noise = torch.rand(50, 64, generator=torch.Generator().manual_seed(0))
    sequential, sequential_evaluations = sample(model, "sequential", 50, noise=noise)
    fixed, fixed_evaluations = sample(model, "fixed_point", 50, noise=noise)
    assert sequential_evaluations == 64
    assert torch.equal(fixed, sequential)
    assert fixed_evaluations < 64
    assert 0.05 < sequential.mean() < 0.95  # not a degenerate all-zero or all-one model


def test_truncated_fixed_point_has_the_first_iterations_pixels_exact():
    model = random_model(k=1, height=8, width=8, scale=1.0)
    noise = torch.rand(50, 64, generator=torch.Generator().manual_seed(1))
    sequential, _ = sample(model, "sequential", 50, noise=noise)
    _, converged = sample(model, "fixed_point", 50, noise=noise)
    for iterations in range(1, converged):
        approximate, evaluations = sample(model, "fixed_point", 50, iterations, noise=noise)
        assert evaluations == iterations
        prefix = model.orders[0, :iterations]
        assert torch.equal(approximate[:, prefix], sequential[:, prefix])


def test_samplers_are_seeded_and_binary():
    model = random_model(k=4, height=4, width=4, scale=1.0)
    for sampler in ("sequential", "multi_order", "fixed_point"):
        first, _ = sample(model, sampler, 10, generator=torch.Generator().manual_seed(3))
        again, _ = sample(model, sampler, 10, generator=torch.Generator().manual_seed(3))
        assert torch.equal(first, again) and set(first.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="out of range"):
        sample(model, "multi_order", 10, knob=5)


def test_multi_order_fills_each_orderings_next_pixel_once_per_step():
    spy = Spy(random_model(k=2, height=3, width=3, scale=1.0))  # raster and reversed raster
    ones, evaluations = sample(spy, "multi_order", 4, knob=2, noise=torch.zeros(4, 9))  # u = 0: every pixel -> 1
    assert ones.eq(1).all()
    steps = [set(x[0].nonzero().flatten().tolist()) for x in [*spy.inputs, ones]]
    new = [sorted(after - before) for before, after in zip(steps, steps[1:])]
    assert new == [[0, 8], [1, 7], [2, 6], [3, 5], [4]]
    assert evaluations == 2 * len(spy.inputs) and len(spy.inputs) == math.ceil(9 / 2)  # 2 orderings a step


@pytest.mark.parametrize("knob", [1, 2, 4, 8])
def test_multi_order_evaluations_scale_like_d_over_k(knob):
    spy = Spy(random_model(k=8, height=8, width=8, scale=1.0))
    samples, evaluations = sample(spy, "multi_order", 3, knob=knob, noise=torch.zeros(3, 64))
    assert samples.eq(1).all() and evaluations == knob * len(spy.inputs)  # a step runs `knob` orderings
    filled = [int(x[0].sum()) for x in [*spy.inputs, samples]]
    assert all(0 < b - a <= knob for a, b in zip(filled, filled[1:]))  # at most one new pixel per ordering
    assert math.ceil(64 / knob) <= len(spy.inputs) <= 1.5 * math.ceil(64 / knob)
    if knob == 1:
        assert torch.equal(samples, sample(spy.model, "sequential", 3, noise=torch.zeros(3, 64))[0])


class MeanScorer:
    def classifier_score(self, images: torch.Tensor) -> float:
        return 1 + float(images.mean())

    def frechet_distance(self, images: torch.Tensor) -> float:
        return float(images.std())


def test_speed_quality_curve_rows_and_files(tmp_path):
    model = random_model(k=4, height=4, width=4, scale=1.0)
    rows = speed_quality_curve(model, 4, 4, MeanScorer(), num_samples=20, seed=0)
    assert [(row["sampler"], row["knob"]) for row in rows] == curve_settings(4, 16)
    assert [row["knob"] for row in rows if row["sampler"] == "multi_order"] == [2, 4]
    assert rows[0]["sampler"] == "sequential" and rows[0]["speedup"] == 1 and rows[0]["network_evaluations"] == 16
    assert all(list(row) == list(CURVE_FIELDS) and row["network_evaluations"] >= 1 for row in rows)
    exact = [row for row in rows if row["sampler"] == "fixed_point" and row["knob"] == 16][0]
    assert exact["classifier_score"] == rows[0]["classifier_score"]  # the same samples
    table, plot = write_speed_quality(rows, tmp_path)
    assert table.read_text().splitlines()[0] == ",".join(CURVE_FIELDS)
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_samplers_run_in_eval_mode_and_restore_the_callers_mode():
    """With dropout in training mode the network is random; samplers must use eval mode, so the exact fixed
    point still equals sequential sampling, and hand the model back in the mode it came in."""
    model = FarmMADE(make_orderings("raster", 2, 6, 6), (64,), dropout=0.5, seed=3)
    model.train()
    noise = torch.rand(20, 36, generator=torch.Generator().manual_seed(1))
    sequential, _ = sample(model, "sequential", 20, noise=noise)
    fixed, evaluations = sample(model, "fixed_point", 20, noise=noise)
    assert torch.equal(fixed, sequential) and evaluations < 36
    assert model.training
