"""What training needs to know about FARM+PixelCNN++: build, minibatch, loss, evaluation, weight average.

Losses (nats per image; farm_sweep/pixelcnn/farm.py defines the terms):
  `mc`:       one ordering per minibatch, ordering (step // resample_every) mod k; with a divergence all k
              orderings run (the divergence needs them) and the main term is still that one ordering's NLL.
  `ensemble`: eq 3, the evidence-weighted per-pixel mixture of all k orderings.
  divergence `jsd` (uniform 1/k, eq 6) or `kl` (evidence-weighted, eq 5), times divergence_weight.
Dropout masks are drawn from a generator seeded by (seed, step), so a resumed run is exact.

Weight average (ema_decay > 0): avg <- decay avg + (1 - decay) theta after every optimizer step, kept as
buffers of the model so that every checkpoint carries it; evaluation uses the averaged weights. The
training loop does not tell the task when it stepped the optimizer, so the average absorbs the new
weights lazily: `loss` marks that a step follows, and the next `loss` or `evaluate` folds the weights in
first. Every optimizer step is counted exactly once, and resuming from a checkpoint continues exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from farm_sweep.losses import mixture_nll
from farm_sweep.pixelcnn.farm import FarmPixelCNN, transform_indices
from farm_sweep.pixelcnn.logistic_mixture import to_unit
from farm_sweep.pixelcnn.losses import bits_per_dim, divergence, farm_loss
from farm_sweep.pixelcnn.network import PixelCNNConfig

if TYPE_CHECKING:  # the configuration is training's; a family only reads it
    from farm_sweep.training.config import TrainConfig

EVAL_BATCH = 100


class WeightAverage(nn.Module):
    """An exponential moving average of a module's parameters, stored as buffers (state_dict carries it)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = decay
        for name, parameter in module.named_parameters():
            self.register_buffer(_buffer_name(name), parameter.detach().clone())
        self.register_buffer("stale", torch.tensor(False))

    def expect_step(self) -> None:
        """An optimizer step is about to change the weights: absorb them at the next `absorb`."""
        self.stale.fill_(True)

    @torch.no_grad()
    def absorb(self, module: nn.Module) -> None:
        """Fold the module's current weights into the average if a step happened since the last fold."""
        if not self.stale:
            return
        for name, parameter in module.named_parameters():
            getattr(self, _buffer_name(name)).lerp_(parameter, 1.0 - self.decay)
        self.stale.fill_(False)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for name, parameter in module.named_parameters():
            parameter.copy_(getattr(self, _buffer_name(name)))


def _buffer_name(parameter_name: str) -> str:
    return parameter_name.replace(".", "__")


class FarmPixelCNNWithEma(FarmPixelCNN):
    """FarmPixelCNN plus its weight average `ema` (None when ema_decay is 0)."""

    def __init__(self, config: PixelCNNConfig, transforms: Sequence[int], weight_sharing: str,
                 ema_decay: float) -> None:
        super().__init__(config, transforms, weight_sharing)
        self.ema = WeightAverage(self, ema_decay) if ema_decay > 0 else None

    @contextmanager
    def averaged(self) -> Iterator[FarmPixelCNNWithEma]:
        """Inside the block the model holds its averaged weights (its own without an average)."""
        if self.ema is None:
            yield self
            return
        self.ema.absorb(self)
        own = [p.detach().clone() for p in self.parameters()]
        self.ema.copy_to(self)
        try:
            yield self
        finally:
            with torch.no_grad():
                for parameter, value in zip(self.parameters(), own):
                    parameter.copy_(value)


def pixelcnn_config(config: TrainConfig, channels: int) -> PixelCNNConfig:
    dropout = PixelCNNConfig.dropout if config.dropout is None else config.dropout
    return PixelCNNConfig(channels=channels, filters=config.filters, resnets_per_stage=config.resnets_per_stage,
                          stages=config.stages, mixtures=config.mixtures, dropout=dropout, causal=config.causal)


@torch.no_grad()
def dataset_log_probs(model: FarmPixelCNN, images: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """log p_i(x) in nats of every ordering i and uint8 image x (N, C, H, W), in batches: (k, N) float64."""
    device = next(model.parameters()).device
    return torch.cat([model(to_unit(images[start:start + batch_size]).to(device)).sum((-2, -1)).double().cpu()
                      for start in range(0, len(images), batch_size)], dim=1)


def likelihood_metrics(model: FarmPixelCNN, images: torch.Tensor, batch_size: int = EVAL_BATCH) -> dict[str, float]:
    """On uint8 images (N, C, H, W): `nll_image` (mixture -log (1/k) sum_i p_i(x), nats per image), `bpd`
    (the same in bits per dimension) and `bpd_ordering_<i>` (each ordering alone)."""
    log_p = dataset_log_probs(model, images, batch_size)
    dims = images[0].numel()
    nll = mixture_nll(log_p).mean().item()
    metrics = {"nll_image": nll, "bpd": bits_per_dim(nll, dims)}
    metrics |= {f"bpd_ordering_{i}": bits_per_dim(-value, dims) for i, value in enumerate(log_p.mean(1).tolist())}
    return metrics


class PixelCNNTask:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def build(self, height: int, width: int, channels: int) -> FarmPixelCNNWithEma:
        c = self.config
        return FarmPixelCNNWithEma(pixelcnn_config(c, channels), transform_indices(c.num_orderings, c.ordering_family),
                                   c.weight_sharing, c.ema_decay)

    def batch(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 levels -> [-1, 1]."""
        return to_unit(images)

    def loss(self, model: FarmPixelCNNWithEma, x: torch.Tensor,
             step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        if model.ema is not None:
            model.ema.absorb(model)
            model.ema.expect_step()
        torch.manual_seed(c.seed * 1_000_003 + step)  # dropout masks: a function of (seed, step)
        weights = model.evidence_weights(x.shape[-2], x.shape[-1]).to(x.device)
        if c.loss == "ensemble":
            return farm_loss(model.params(x), x, weights, "ensemble", c.divergence, c.divergence_weight)
        ordering = (step // c.resample_every) % model.k
        if c.divergence == "none":
            return farm_loss(model.params(x, [ordering]), x, weights, "mc")
        params = model.params(x)
        main, parts = farm_loss(params[ordering:ordering + 1], x, weights, "mc")
        spread = divergence(params, x, weights if c.divergence == "kl" else None)
        return main + c.divergence_weight * spread, {**parts, "divergence": spread.detach()}

    def evaluate(self, model: FarmPixelCNNWithEma, images: torch.Tensor) -> dict[str, float]:
        with model.averaged():
            return likelihood_metrics(model, images)
