"""What training needs to know about FARM+MADE: how to build it, one minibatch's loss, its evaluation."""

from __future__ import annotations

import torch

from farm_sweep.config import ConfigError, TrainConfig
from farm_sweep.likelihood import nll_image
from farm_sweep.losses import farm_loss
from farm_sweep.models.made import FarmMADE
from farm_sweep.orderings import evidence_weights, make_orderings


class MadeTask:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def build(self, height: int, width: int, channels: int) -> FarmMADE:
        if channels != 1:
            raise ConfigError(f"dataset: {self.config.dataset!r} has {channels} channels; MADE models binary "
                              f"single-channel images (digits, binarized_mnist, mnist)")
        c = self.config
        orders = make_orderings(c.ordering_family, c.num_orderings, height, width, seed=c.seed)
        return FarmMADE(orders, c.hidden_sizes, c.weight_sharing, c.num_masks, seed=c.seed)

    def batch(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Dynamic binarization draws fresh binary pixels from the grey levels every time."""
        return torch.bernoulli(images, generator=generator) if self.config.binarize == "dynamic" else images

    def loss(self, model: FarmMADE, x: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
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
