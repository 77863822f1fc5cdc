"""FARM + PixelCNN++ objectives and likelihoods (paper section 4, eqs 1, 3 and 6) over k orderings.

Losses (all nats per image, batch mean; `bits_per_dim` converts): the image-level main terms and, for
the divergence of eq 6, the generalized JSD per SUB-PIXEL: the JSD over 256^3 joint pixel values is out
of reach, so each channel c of pixel d contributes the divergence between the k categoricals
p_i(x_d,c = . | context of d under ordering i, TRUE x_d,<c) over its 256 values: the chain-rule factors
of p_i(x_d | context), treated as eq 4 treats MADE's per-pixel Bernoullis (D = C·H·W dimensions).
"""

from __future__ import annotations

import math

import torch

from farm_sweep.losses import DIVERGENCES, LOSSES
from farm_sweep.pixelcnn.farm import ordering_log_probs
from farm_sweep.pixelcnn.logistic_mixture import channel_log_probs


def ordering_nll(log_px: torch.Tensor) -> torch.Tensor:
    """Eq 1: (1/k) sum_i -log p_i(x), nats per image (batch mean), from (k, B, H, W)."""
    return -log_px.sum((-2, -1)).mean()


def mixture_nll(log_px: torch.Tensor) -> torch.Tensor:
    """-log (1/k) sum_i p_i(x), nats per image (batch mean): the ensemble's exact likelihood."""
    k = log_px.shape[0]
    return (math.log(k) - torch.logsumexp(log_px.sum((-2, -1)), dim=0)).mean()


def ensemble_nll(log_px: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Eq 3: -sum_d log x̂_d with x̂_d = sum_i w_i,d p_i(x_d | ...) (eq 2), nats per image (batch mean).

    weights (k, H, W) sum to one over the orderings. A training loss, not a normalized likelihood."""
    mixed = torch.logsumexp(weights.log()[:, None] + log_px, dim=0)  # (B, H, W)
    return -mixed.sum((-2, -1)).mean()


def generalized_jsd(log_p: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i w_i KL(p_i || sum_j w_j p_j) for k categoricals log_p (k, ..., V); w_i = 1/k by default.

    `weights` broadcasts against log_p.shape[:-1]. Returns the divergence per distribution, shape (...)."""
    k = log_p.shape[0]
    log_w = torch.full((k,) + (1,) * (log_p.dim() - 2), -math.log(k)) if weights is None else weights.log()
    log_w = log_w.to(log_p).unsqueeze(-1)
    log_mixture = torch.logsumexp(log_w + log_p, dim=0)
    kl = (log_p.exp() * (log_p - log_mixture)).sum(-1)
    return (log_w.squeeze(-1).exp() * kl).sum(0)


def divergence(params: torch.Tensor, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Eq 6's divergence per sub-pixel (module doc), summed over sub-pixels: nats per image (batch mean).

    weights None: the generalized JSD (uniform 1/k, `jsd`); weights (k, H, W): evidence-weighted KL to
    the evidence-weighted mixture (`kl`, eq 5). Memory: k·B·C·M·H·W·256 floats."""
    k = params.shape[0]
    log_p = channel_log_probs(x.repeat(k, 1, 1, 1), params.flatten(0, 1)).unflatten(0, (k, -1))
    weights = None if weights is None else weights[:, None, None]  # (k, 1, 1, H, W) over (k, B, C, H, W)
    return generalized_jsd(log_p, weights).sum((-3, -2, -1)).mean()


def farm_loss(params: torch.Tensor, x: torch.Tensor, weights: torch.Tensor, loss: str = "mc",
              divergence_name: str = "none",
              divergence_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """total = main + λ · divergence, nats per image. `mc`: eq 1 over the orderings in `params` (pass
    one ordering's params to train one per minibatch); `ensemble`: eq 3. Divergence `jsd` or `kl`."""
    log_px = ordering_log_probs(params, x)
    if loss == "mc":
        main = ordering_nll(log_px)
    elif loss == "ensemble":
        main = ensemble_nll(log_px, weights)
    else:
        raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
    parts = {"main_loss": main.detach()}
    if divergence_name == "none":
        return main, parts
    if divergence_name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence_name!r}; choose one of {DIVERGENCES}")
    div = divergence(params, x, weights if divergence_name == "kl" else None)
    parts["divergence"] = div.detach()
    return main + divergence_weight * div, parts


def bits_per_dim(nats_per_image: torch.Tensor | float, dims: int) -> torch.Tensor | float:
    """Nats per image -> bits per dimension (dims = C·H·W, e.g. 3072 for CIFAR-10)."""
    return nats_per_image / (dims * math.log(2.0))
