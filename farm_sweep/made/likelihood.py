"""Exact whole-image likelihoods of a FARM+MADE: per ordering and for the k-ordering mixture."""

from __future__ import annotations

import math

import torch

from farm_sweep.inference import inference
from farm_sweep.losses import image_log_probs, mixture_nll
from farm_sweep.made.network import FarmMADE

PER_ORDERING = "nll_image_ordering_"  # the metric of ordering i alone is PER_ORDERING + str(i)


@inference
def ordering_log_probs(model: FarmMADE, x: torch.Tensor) -> torch.Tensor:
    """log p_i(x) for every ordering i, (k, B). With several hidden-mask sets, p_i is the mask
    ensemble (1/M) sum_m p_i,m(x): the model is the uniform mixture of its mask sets (docs/models.md)."""
    per_mask = []
    for m in range(model.num_masks):
        with model.using_mask(m):
            per_mask.append(image_log_probs(model(x), x))
    return torch.logsumexp(torch.stack(per_mask), dim=0) - math.log(model.num_masks)


@inference
def dataset_log_probs(model: FarmMADE, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """log p_i(x) in nats of every ordering i and binary image x (N, D), in batches: (k, N) float64."""
    device = next(model.parameters()).device
    return torch.cat([ordering_log_probs(model, images[start:start + batch_size].to(device)).double().cpu()
                      for start in range(0, len(images), batch_size)], dim=1)


def nll_image(model: FarmMADE, images: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """Mean test NLL in nats per image: `nll_image` for the mixture -log (1/k) sum_i p_i(x), and
    `nll_image_ordering_<i>` for each ordering alone."""
    log_probs = dataset_log_probs(model, images, batch_size)
    metrics = {"nll_image": mixture_nll(log_probs).mean().item()}
    metrics.update({f"{PER_ORDERING}{i}": -value for i, value in enumerate(log_probs.mean(1).tolist())})
    return metrics
