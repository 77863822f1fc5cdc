"""Fast sampling from a FARM+PixelCNN++ (paper 4.5, DESIGN 5) and its speed-quality curve.

Every sampler draws the pixels of one ordering (`ordering`, a position in the model's transforms) from
frozen uniform noise (N, 1 + C, H, W) indexed by pixel (logistic_mixture.sample), so two samplers that
condition every pixel on the same values draw the same image, bit for bit. A step is one network
evaluation on the whole batch; the pixels of the step's group are then drawn from its output.
- `sequential`: one pixel per step, in an order the network is causal for: raster for the `raster`
  variant, anti-diagonal by anti-diagonal for `antidiagonal`: H*W evaluations (the reference).
- `wavefront`: knob w = pixels per step: each anti-diagonal (of the ordering's transformed grid) is
  filled in chunks of w pixels, so w = 1 is one pixel a step and w >= min(H, W) one anti-diagonal a step,
  H + W - 1 evaluations (63 for 32x32, 16.3x fewer than 1024). Exact for the `antidiagonal` variant,
  whose pixels depend only on earlier anti-diagonals; on a `raster` network it is an approximation: the
  pixels the wavefront has not reached yet hold 0.0 (mid-grey, not one of the 256 levels), and the network
  reads them as observed values (docs/pixelcnn.md).
- `fixed_point`: Jacobi iteration x <- draw(network(x)) on all pixels at once until nothing changes;
  knob = the most evaluations. After t evaluations the first t pixels (anti-diagonals for the
  `antidiagonal` variant) of the causal order are final, and the only fixed point is the sequential
  sample, so it is exact whenever it stops by itself (always within H*W evaluations); stopped earlier by
  the knob it gives an approximate sample.
Activation caching (the other exact speed-up) is not implemented.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from farm_sweep.inference import inference
from farm_sweep.pixelcnn.farm import FarmPixelCNN, transform_ranks
from farm_sweep.pixelcnn.logistic_mixture import sample as draw
from farm_sweep.speed_quality import Scorer, speed_quality_rows

SAMPLERS = ("sequential", "wavefront", "fixed_point")


def pixel_groups(model: FarmPixelCNN, sampler: str, knob: int, height: int, width: int,
                 ordering: int = 0) -> list[torch.Tensor]:
    """The flat pixel indices each step of `sequential` or `wavefront` fills, in step order."""
    transform = model.transforms[ordering]
    if sampler == "sequential":
        rank = transform_ranks(transform, height, width, model.config.causal).flatten()
        return list(rank.argsort(stable=True).split(1))
    diagonal = transform_ranks(transform, height, width, "antidiagonal").flatten()
    groups = []
    for level in diagonal.unique():  # sorted: earlier anti-diagonals first
        groups += list((diagonal == level).nonzero().squeeze(1).split(knob))
    return groups


@inference
def sample(model: FarmPixelCNN, sampler: str, num_samples: int, height: int, width: int, knob: int | None = None,
           *, ordering: int = 0, noise: torch.Tensor | None = None,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """(samples (N, C, H, W) on the level grid in [-1, 1], network evaluations). Noise: `noise`
    (N, 1 + C, H, W) uniform, or drawn from `generator`. Knob: pixels per step for wavefront (default a
    whole anti-diagonal), most evaluations for fixed_point (default H*W: exact)."""
    channels = model.config.channels
    weight = next(model.parameters())
    device = weight.device
    if noise is None:
        noise = torch.rand(num_samples, 1 + channels, height, width, generator=generator)
    noise = noise.to(weight)
    x = torch.zeros(num_samples, channels, height, width, dtype=weight.dtype, device=device)

    def network(images: torch.Tensor) -> torch.Tensor:
        return model.params(images, [ordering])[0]

    if sampler == "fixed_point":
        return _fixed_point(network, x, noise, channels, _in_range(knob or height * width, height * width))
    if sampler == "sequential":
        groups = pixel_groups(model, sampler, 1, height, width, ordering)
    elif sampler == "wavefront":
        groups = pixel_groups(model, sampler, _in_range(knob or min(height, width), height * width), height, width,
                              ordering)
    else:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    for group in groups:
        fill = torch.zeros(height * width, dtype=torch.bool, device=device)
        fill[group.to(device)] = True
        x = torch.where(fill.view(1, 1, height, width), draw(network(x), channels, noise), x)
    return x, len(groups)


def _fixed_point(network: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, noise: torch.Tensor, channels: int,
                 max_evaluations: int) -> tuple[torch.Tensor, int]:
    evaluations = 0
    while evaluations < max_evaluations:
        update = draw(network(x), channels, noise)
        evaluations += 1
        if torch.equal(update, x):
            break
        x = update
    return x, evaluations


def _in_range(knob: int, high: int) -> int:
    if not 1 <= knob <= high:
        raise ValueError(f"knob: {knob} is out of range 1..{high}")
    return knob


def curve_settings(height: int, width: int) -> list[tuple[str, int]]:
    """(sampler, knob) pairs of the curve: sequential; wavefront with 2, 4, ... pixels per step up to a
    whole anti-diagonal; fixed_point capped at D/16, D/8, D/4, D/2 and D evaluations."""
    side = min(height, width)
    widths = sorted({min(2 ** e, side) for e in range(1, math.ceil(math.log2(side)) + 1)})
    dim = height * width
    caps = sorted({dim // 2 ** e for e in range(5)} - {0})
    return [("sequential", 1)] + [("wavefront", w) for w in widths] + [("fixed_point", m) for m in caps]


def speed_quality_curve(model: FarmPixelCNN, height: int, width: int, scorer: Scorer, num_samples: int, seed: int,
                        settings: list[tuple[str, int]] | None = None, ordering: int = 0,
                        timed_samples: int | None = None) -> list[dict[str, Any]]:
    """farm_sweep.speed_quality's rows for `settings` (default `curve_settings`), every setting with the same
    noise: quality of `num_samples` samples, wall time of the first `timed_samples` (default: all) by the
    project's benchmark method (farm_sweep.timing); ratios are to the first setting.
    `farm_sweep.speed_quality.write_speed_quality` writes the table and the figure."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(num_samples, 1 + model.config.channels, height, width, generator=generator)

    def draw(sampler: str, knob: int, batch: int) -> tuple[torch.Tensor, int]:
        return sample(model, sampler, batch, height, width, knob, noise=noise[:batch], ordering=ordering)

    synchronize = torch.cuda.synchronize if next(model.parameters()).is_cuda else None
    return speed_quality_rows(settings or curve_settings(height, width), draw, scorer, num_samples,
                              timed_samples or num_samples, synchronize)
