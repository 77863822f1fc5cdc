"""FARM+MADE training losses and likelihoods (DESIGN section 3), all in nats and all in log space.

Shapes: logits (k, B, D) are Bernoulli logits of p_i,d = p(x_d = 1 | x_<pi_i(d)); x is (B, D) in {0,1};
weights (k, D) are evidence weights that sum to 1 over the k orderings for every pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSSES = ("mc", "ensemble")
DIVERGENCES = ("none", "kl", "jsd")


def pixel_log_probs(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p_i,d(x_d), shape (k, B, D)."""
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")


def image_log_probs(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p_i(x) = sum_d log p_i,d(x_d): each ordering's exact whole-image log-likelihood, (k, B)."""
    return pixel_log_probs(logits, x).sum(-1)


def mixture_nll(component_log_probs: torch.Tensor) -> torch.Tensor:
    """-log (1/k) sum_i p_i(x) for per-component image log-likelihoods (k, B): a mixture of
    probabilities, never of logits. Returns (B,)."""
    k = component_log_probs.shape[0]
    return math.log(k) - torch.logsumexp(component_log_probs, dim=0)


def ensemble_log_probs(logits: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log x̂_d, log (1 - x̂_d)) with x̂_d = sum_i w_i,d p_i,d (eq 2), each (B, D)."""
    log_w = weights.clamp_min(1e-30).log()[:, None, :]
    log_one = torch.logsumexp(log_w + F.logsigmoid(logits), dim=0)
    log_zero = torch.logsumexp(log_w + F.logsigmoid(-logits), dim=0)
    return log_one, log_zero


def mc_loss(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Eq 1: mean binary cross-entropy over the given orderings, pixels and batch."""
    return -pixel_log_probs(logits, x).mean()


def ensemble_loss(logits: torch.Tensor, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Eq 3: binary cross-entropy of the evidence-weighted mixture x̂, mean over pixels and batch."""
    log_one, log_zero = ensemble_log_probs(logits, weights)
    return -(x * log_one + (1 - x) * log_zero).mean()


def weighted_kl(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(1/m) sum_d sum_i w_i,d KL(Bern(p_i,d) || Bern(x̂_d)) with x̂_d = sum_j w_j,d p_j,d, batch mean.

    Eq 5 with evidence weights; with uniform weights 1/k it is the generalized JSD of eq 4."""
    log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)
    log_one, log_zero = ensemble_log_probs(logits, weights)
    kl = log_p.exp() * (log_p - log_one) + log_q.exp() * (log_q - log_zero)
    return (weights[:, None, :] * kl).sum(0).mean()


def divergence(name: str, logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`kl` (eq 5, evidence-weighted) or `jsd` (eq 4, uniform weights)."""
    if name == "kl":
        return weighted_kl(logits, weights)
    if name == "jsd":
        return weighted_kl(logits, torch.full_like(weights, 1.0 / weights.shape[0]))
    raise ValueError(f"unknown divergence {name!r}; choose one of {DIVERGENCES}")


def farm_loss(logits: torch.Tensor, x: torch.Tensor, weights: torch.Tensor, loss: str,
              divergence_name: str = "none", divergence_weight: float = 0.0,
              mc_ordering: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """total = main + λ · divergence. For `mc`, `logits` holds either the one ordering in use, or all k
    orderings (when a divergence needs them) with `mc_ordering` naming the one the main term trains."""
    if loss == "mc":
        main = mc_loss(logits if mc_ordering is None else logits[mc_ordering:mc_ordering + 1], x)
    elif loss == "ensemble":
        main = ensemble_loss(logits, x, weights)
    else:
        raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
    parts = {"main_loss": main.detach()}
    if divergence_name == "none":
        return main, parts
    div = divergence(divergence_name, logits, weights)
    parts["divergence"] = div.detach()
    return main + divergence_weight * div, parts
