"""FARM+PixelCNN++ samplers (exactness, evaluation counts), hole likelihoods and occlusions."""

import math

import pytest
import torch

from farm_sweep.occlusions import side_range
from farm_sweep.pixelcnn.farm import FarmPixelCNN
from farm_sweep.pixelcnn.inpaint import (
    CASES,
    evaluate_inpainting,
    hole_nll_exact,
    inpaint,
    inpainting_figure,
    make_occlusions,
    plan_for,
)
from farm_sweep.pixelcnn.logistic_mixture import log_prob, quantize
from farm_sweep.pixelcnn.network import PixelCNNConfig
from farm_sweep.pixelcnn.sampling import curve_settings, sample, speed_quality_curve
from farm_sweep.speed_quality import CURVE_FIELDS, write_speed_quality

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(causal="raster", channels=3, stages=2, transforms=(0, 7), seed=0, filters=8):
    torch.manual_seed(seed)
    config = PixelCNNConfig(channels=channels, filters=filters, resnets_per_stage=1, stages=stages, mixtures=2,
                            causal=causal)
    return FarmPixelCNN(config, transforms).double().eval()


def grid_values(shape, generator):
    return torch.randint(0, 256, shape, generator=generator).double() / 127.5 - 1.0


# ---------------------------------------------------------------- samplers


@pytest.mark.parametrize("ordering", [0, 1])
def test_wavefront_equals_sequential_for_the_antidiagonal_model(ordering):
    model = tiny_model("antidiagonal")
    noise = torch.rand(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    reference, evaluations = sample(model, "sequential", 4, 8, 8, noise=noise, ordering=ordering)
    assert evaluations == 64
    assert torch.equal(reference, quantize(reference))
    for knob, steps in ((None, 15), (8, 15), (3, 27), (1, 64)):
        wave, count = sample(model, "wavefront", 4, 8, 8, knob, noise=noise, ordering=ordering)
        assert count == steps
        assert torch.equal(wave, reference), knob


@pytest.mark.parametrize("causal", ["raster", "antidiagonal"])
def test_fixed_point_equals_sequential_bit_for_bit(causal):
    model = tiny_model(causal)
    noise = torch.rand(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    reference, _ = sample(model, "sequential", 3, 8, 8, noise=noise, ordering=1)
    fixed, evaluations = sample(model, "fixed_point", 3, 8, 8, noise=noise, ordering=1)
    assert torch.equal(fixed, reference)
    assert evaluations <= (64 if causal == "raster" else 16)
    _, capped = sample(model, "fixed_point", 3, 8, 8, 2, noise=noise, ordering=1)
    assert capped == 2


def test_wavefront_on_the_raster_model_is_an_approximation():
    model = tiny_model("raster")
    noise = torch.rand(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    reference, _ = sample(model, "sequential", 3, 8, 8, noise=noise)
    wave, evaluations = sample(model, "wavefront", 3, 8, 8, noise=noise)
    assert evaluations == 15 and not torch.equal(wave, reference)


def test_speed_quality_curve_rows_are_written(tmp_path):
    class Stub:
        def classifier_score(self, images):
            return float(images.mean())

        def frechet_distance(self, images):
            return float(images.std())

    model = tiny_model("antidiagonal", stages=1).float()
    settings = [("sequential", 1), ("wavefront", 2), ("fixed_point", 16)]
    rows = speed_quality_curve(model, 4, 4, Stub(), 2, seed=0, settings=settings)
    assert [tuple(r[f] for f in ("sampler", "knob", "network_evaluations")) for r in rows][:2] == [
        ("sequential", 1, 16), ("wavefront", 2, 10)]  # anti-diagonals of 1, 2, 3, 4, 3, 2, 1 pixels, chunks of 2
    assert rows[0]["speedup"] == 1.0 and rows[1]["evaluation_speedup"] == pytest.approx(1.6)
    assert rows[2]["classifier_score"] == rows[0]["classifier_score"]  # the exact fixed point: the same samples
    assert all(list(row) == list(CURVE_FIELDS) and row["threads"] == 1 for row in rows)  # one_thread fixture
    assert all(0 < row["wall_seconds_min"] <= row["wall_seconds"] <= row["wall_seconds_max"] for row in rows)
    assert all(p.is_file() for p in write_speed_quality(rows, tmp_path))
    assert curve_settings(32, 32)[:6] == [("sequential", 1)] + [("wavefront", w) for w in (2, 4, 8, 16, 32)]


@pytest.mark.parametrize("sampler", ["sequential", "wavefront", "fixed_point"])
def test_samplers_run_in_eval_mode_and_restore_the_callers_mode(sampler):
    """Dropout 0.5 (the default): in training mode the network is random. A model left in training mode
    samples what it samples in eval mode, and is handed back in training mode."""
    model = tiny_model("antidiagonal")
    assert model.config.dropout == 0.5
    noise = torch.rand(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    expected, expected_evaluations = sample(model, sampler, 2, 8, 8, noise=noise)
    model.train()
    samples, evaluations = sample(model, sampler, 2, 8, 8, noise=noise)
    assert torch.equal(samples, expected) and evaluations == expected_evaluations
    assert model.training


# ---------------------------------------------------------------- hole likelihoods


def chain_nll(model, x, occlusion, fill, generator):
    """The definition, one pass per hole pixel: pixel t's mixture conditional read off a pass on an image
    whose unknown pixels (hole pixels t, t+1, ... of the fill order) hold random values."""
    plan = plan_for(model, occlusion, fill)
    pixels = plan.pixels.tolist()
    nll = torch.empty(len(x), len(pixels), dtype=x.dtype)
    for t, pixel in enumerate(pixels):
        unknown = torch.zeros(occlusion.numel(), dtype=torch.bool)
        unknown[pixels[t:]] = True
        scrambled = torch.where(unknown.view(occlusion.shape), grid_values(x.shape, generator), x)
        mixture = []
        for i in range(model.k):
            params = model.params(scrambled, [i])[0]
            log_p = log_prob(x, params).flatten(1)[:, pixel]
            mixture.append(log_p + plan.weights[i, t].log())
        nll[:, t] = -torch.logsumexp(torch.stack(mixture), 0)
    return nll


@pytest.mark.parametrize("fill", ["single", "best_evidence", "evidence_weighted"])
def test_teacher_forced_hole_nll_equals_the_chain_definition(fill):
    model = tiny_model(channels=1, stages=1, transforms=(0, 7, 1))
    g = torch.Generator().manual_seed(4)
    x = grid_values((3, 1, 4, 4), g)
    occlusion = torch.zeros(4, 4, dtype=torch.bool)
    occlusion[0:3, 2:4] = True
    with torch.no_grad():
        assert torch.allclose(hole_nll_exact(model, x, occlusion, fill), chain_nll(model, x, occlusion, fill, g),
                              atol=1e-10)


def test_hole_likelihoods_by_brute_force():
    """Over all 256^2 values of the two-pixel hole of a 1x3 grayscale image: with the canonical ordering
    alone (`best_evidence`: it leads) the hole's probability is p(hole | x_0) = p(x) / sum_hole p(x); the
    `evidence_weighted` mixture (the reversed raster joins at the last pixel, whose context it knows) is
    a distribution over the hole too. And inpaint's chain nll: -log p(x_1 | x_0) for the first hole pixel,
    -log p(x_2 | x_0, SAMPLED x_1) for the second, both from the joint by summation."""
    model = tiny_model(channels=1, stages=1, transforms=(0, 1), filters=4)
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0
    first, second = torch.meshgrid(levels, levels, indexing="ij")
    hole = torch.stack([first.flatten(), second.flatten()], -1).view(-1, 1, 1, 2)
    x = torch.cat([torch.full((len(hole), 1, 1, 1), 0.3), hole], dim=3)
    occlusion = torch.tensor([[False, True, True]])
    assert plan_for(model, occlusion, "evidence_weighted").weights[1].tolist() == [0, 0.25]
    with torch.no_grad():
        log_best = -hole_nll_exact(model, x, occlusion, "best_evidence").sum(1)
        log_mixed = -hole_nll_exact(model, x, occlusion, "evidence_weighted").sum(1)
        log_joint = model(x)[0].sum((-2, -1))
    assert torch.allclose(log_best, log_joint - torch.logsumexp(log_joint, 0), atol=1e-9)
    assert abs(torch.logsumexp(log_mixed, 0).item()) < 1e-9
    assert not torch.allclose(log_mixed, log_best)

    log_joint = log_joint.view(256, 256)  # [x_1 level, x_2 level]
    generator = torch.Generator().manual_seed(8)
    truth_levels = torch.randint(0, 256, (6, 2), generator=generator)
    truth = x.view(256, 256, 1, 1, 3)[truth_levels[:, 0], truth_levels[:, 1]]
    filled, nll = inpaint(model, truth, occlusion, "best_evidence", generator)
    sampled = ((filled[:, 0, 0, 1] + 1) * 127.5).round().long()
    log_first = torch.logsumexp(log_joint, 1) - torch.logsumexp(log_joint.flatten(), 0)
    log_second = log_joint - torch.logsumexp(log_joint, 1, keepdim=True)
    torch.testing.assert_close(nll[:, 0], -log_first[truth_levels[:, 0]], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(nll[:, 1], -log_second[sampled, truth_levels[:, 1]], rtol=1e-9, atol=1e-9)
    assert not torch.equal(sampled, truth_levels[:, 0])  # conditioned on samples that differ from the truth


def test_inpaint_keeps_the_evidence_and_fills_on_the_level_grid():
    model = tiny_model().float()
    g = torch.Generator().manual_seed(6)
    x = grid_values((5, 3, 8, 8), g).float()
    occlusion = make_occlusions("best", 1, 8, 8, seed=0)[0]
    filled, nll = inpaint(model, x, occlusion, "evidence_weighted", g)
    assert torch.equal(filled[:, :, ~occlusion], x[:, :, ~occlusion])
    hole = filled[:, :, occlusion]
    assert torch.equal(hole, quantize(hole)) and torch.isfinite(nll).all()
    assert not torch.equal(hole, x[:, :, occlusion])  # sampled, not copied


class MeanScorer:
    """Scores images by their mean value: a score that says which images it was given."""

    def classifier_score(self, images):
        return float(images.double().mean())

    def frechet_distance(self, images):
        return float(images.double().std())


def test_evaluate_inpainting_reports_exact_chain_and_the_score_of_the_inpainted_images(tmp_path):
    model = tiny_model().float()
    images = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
    metrics = evaluate_inpainting(model, images, "average", num_occlusions=2, images_per_occlusion=4, seed=5,
                                  scorer=MeanScorer())
    assert set(metrics) == {f"{fill}/{name}" for fill in ("single", "best_evidence", "evidence_weighted")
                            for name in ("bpd_exact", "bpd_chain", "classifier_score")} | {"occluded_fraction"}
    occlusions = make_occlusions("average", 2, 8, 8, seed=5)
    hidden = 4 * int(occlusions.sum()) * 3 * math.log(2)  # sub-pixels x ln 2
    for fill in ("single", "evidence_weighted"):
        generator, exact, chain, filled = torch.Generator().manual_seed(5), 0.0, 0.0, []
        for occlusion, block in zip(occlusions, images.split(4)):
            x = block.float() / 127.5 - 1
            exact += hole_nll_exact(model, x, occlusion, fill).double().sum().item()
            inpainted, nll = inpaint(model, x, occlusion, fill, generator)
            chain += nll.double().sum().item()
            filled.append(inpainted)
        assert metrics[f"{fill}/bpd_exact"] == pytest.approx(exact / hidden)
        assert metrics[f"{fill}/bpd_chain"] == pytest.approx(chain / hidden)
        assert metrics[f"{fill}/bpd_chain"] != pytest.approx(metrics[f"{fill}/bpd_exact"])
        assert metrics[f"{fill}/classifier_score"] == pytest.approx(float(torch.cat(filled).double().mean()))
    assert inpainting_figure(model, images[:3], tmp_path / "table4.png", case="top_half").is_file()


# ---------------------------------------------------------------- occlusions


def test_occlusions_are_anchored_as_specified_and_seeded():
    best, average, half = (make_occlusions(case, 50, 32, 32, seed=3) for case in CASES)
    assert torch.equal(best, make_occlusions("best", 50, 32, 32, seed=3))
    low, high = side_range(32)
    for b, a in zip(best, average):
        rows, cols = b.any(1).nonzero().squeeze(1), b.any(0).nonzero().squeeze(1)
        assert rows[0] == 0 and cols[-1] == 31  # touches the top and the right border
        assert low <= len(rows) <= high and low <= len(cols) <= high
        assert b.sum() == len(rows) * len(cols)  # one rectangle
        a_rows, a_cols = a.any(1).nonzero().squeeze(1), a.any(0).nonzero().squeeze(1)
        assert a_rows[0] >= 4 and a_rows[-1] <= 27 and a_cols[0] >= 4 and a_cols[-1] <= 27  # in the middle
        assert (len(a_rows), len(a_cols)) == (len(rows), len(cols))  # the same sizes
    assert half.all(0)[:16].all() and not half.any(0)[16:].any()
    assert len({tuple(m.nonzero()[0].tolist()) for m in average}) > 10  # positions vary


def test_best_case_prefers_the_rotated_ordering():
    """The paper's k=2 pair: a hole in the top right has more evidence in rot90_cw (columns to its left)."""
    model = tiny_model()
    occlusion = make_occlusions("best", 1, 8, 8, seed=0)[0]
    plan = plan_for(model, occlusion, "best_evidence")
    assert plan.weights[1].eq(1).all() and plan.weights[0].eq(0).all()
    plan = plan_for(model, make_occlusions("top_half", 1, 8, 8, seed=0)[0], "best_evidence")
    assert plan.weights[1].eq(1).all()
