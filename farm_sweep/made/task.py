"""What training needs to know about FARM+MADE: how to build it, one minibatch's loss, its evaluation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from farm_sweep.losses import farm_loss
from farm_sweep.made.likelihood import nll_image
from farm_sweep.made.network import FarmMADE
from farm_sweep.orderings import evidence_weights, make_orderings

if TYPE_CHECKING:  # the configuration is training's; a family only reads it
    from farm_sweep.training.config import TrainConfig


class MadeTask:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def build(self, height: int, width: int, channels: int) -> FarmMADE:
        c = self.config
        orders = make_orderings(c.ordering_family, c.num_orderings, height, width, seed=c.seed)
        return FarmMADE(orders, c.hidden_sizes, c.weight_sharing, c.num_masks, seed=c.seed,
                        direct_connections=c.direct_connections, dropout=c.dropout or 0.0)

    def batch(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Dynamic binarization draws fresh binary pixels from the grey levels every time."""
        return torch.bernoulli(images, generator=generator) if self.config.binarize == "dynamic" else images

    def loss(self, model: FarmMADE, x: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        if c.dropout:
            torch.manual_seed(c.seed * 1_000_003 + step)  # dropout masks: a function of (seed, step)
        model.set_mask(step % c.num_masks)
        weights = evidence_weights(model.ranks)
        if c.loss == "mc":
            ordering = (step // c.resample_every) % model.k
            if c.divergence == "none":
                return farm_loss(model(x, orderings=torch.tensor([ordering])), x, weights, "mc")
            return farm_loss(model(x), x, weights, "mc", c.divergence, c.divergence_weight, ordering)
        return farm_loss(model(x), x, weights, c.loss, c.divergence, c.divergence_weight)

    def evaluate(self, model: FarmMADE, images: torch.Tensor) -> dict[str, float]:
        return nll_image(model, images)
