"""Losses against values computed by hand from their definitions (DESIGN section 3)."""

import math

import pytest
import torch

from farm_sweep.losses import (
    divergence,
    ensemble_loss,
    farm_loss,
    mc_loss,
    mixture_nll,
    weighted_kl,
)

P = [[0.9, 0.2], [0.6, 0.4]]  # p[i][d]: k=2 orderings, m=2 pixels
W = [[0.25, 0.75], [0.75, 0.25]]
X = [1.0, 0.0]


def logits_of(p):
    p = torch.tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p))[:, None, :]  # (k, B=1, D)


def bern_kl(p, q):
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def hand_mixture(weights):
    return [sum(weights[i][d] * P[i][d] for i in range(2)) for d in range(2)]


def setup():
    return logits_of(P), torch.tensor([X], dtype=torch.float64), torch.tensor(W, dtype=torch.float64)


def test_mc_loss_is_mean_bce():
    logits, x, _ = setup()
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.6)) / 4
    assert mc_loss(logits, x).item() == pytest.approx(expected)


def test_ensemble_loss_mixes_probabilities_with_evidence_weights():
    logits, x, w = setup()
    mix = hand_mixture(W)
    expected = -(math.log(mix[0]) + math.log(1 - mix[1])) / 2
    assert ensemble_loss(logits, x, w).item() == pytest.approx(expected)


def test_kl_is_evidence_weighted_kl_to_the_mixture():
    logits, _, w = setup()
    mix = hand_mixture(W)
    expected = sum(W[i][d] * bern_kl(P[i][d], mix[d]) for i in range(2) for d in range(2)) / 2
    assert divergence("kl", logits, w).item() == pytest.approx(expected)


def test_jsd_is_unweighted_generalized_jsd():
    logits, _, w = setup()
    mean = [(P[0][d] + P[1][d]) / 2 for d in range(2)]
    expected = sum(bern_kl(P[i][d], mean[d]) for i in range(2) for d in range(2)) / (2 * 2)
    assert divergence("jsd", logits, w).item() == pytest.approx(expected)


def test_total_adds_lambda_times_divergence():
    logits, x, w = setup()
    total, parts = farm_loss(logits, x, w, "ensemble", "jsd", 100.0)
    assert total.item() == pytest.approx(parts["main_loss"].item() + 100 * parts["divergence"].item())
    total_mc, _ = farm_loss(logits, x, w, "mc", "kl", 2.0, mc_ordering=1)
    expected = -(math.log(0.6) + math.log(0.6)) / 2 + 2 * divergence("kl", logits, w).item()
    assert total_mc.item() == pytest.approx(expected)


def test_divergences_vanish_when_orderings_agree():
    logits = torch.randn(1, 4, 10).expand(3, 4, 10)
    w = torch.rand(3, 10)
    w = w / w.sum(0)
    assert weighted_kl(logits, w).abs().item() < 1e-6
    assert divergence("jsd", logits, w).abs().item() < 1e-6


def test_mixture_nll_of_probabilities():
    log_p = torch.log(torch.tensor([[0.5], [0.1]], dtype=torch.float64))
    assert mixture_nll(log_p).item() == pytest.approx(-math.log(0.3))


@pytest.mark.parametrize("name", ["mc", "ensemble"])
@pytest.mark.parametrize("div", ["none", "kl", "jsd"])
def test_saturated_probabilities_stay_finite(name, div):
    logits = torch.tensor([[[1e4, -1e4, 0.0]], [[-1e4, 1e4, 50.0]]], requires_grad=True)
    x = torch.tensor([[1.0, 1.0, 0.0]])
    w = torch.tensor([[0.9, 0.1, 0.5], [0.1, 0.9, 0.5]])
    total, _ = farm_loss(logits, x, w, name, div, 1.0, mc_ordering=0 if div != "none" else None)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(logits.grad).all()
