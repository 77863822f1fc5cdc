"""Inpainting (paper 3.4, DESIGN 4): occlusions, fill orders, and the l2 / nll_chain / nll_exact metrics.

Occlusions. An occlusion is a (D,) bool mask (True = hidden) of one axis-aligned rectangle. Its height
is uniform over the integers [max(1, H//4), max(1, 3H//4)] and its width, independently, over the same
range for W (MNIST: 7..21 pixels each side, so 1/16 to 9/16 of the image). `best` anchors it at the
top-left corner, `worst` at the bottom-right corner, `average` places it uniformly anywhere it fits.
The sizes depend only on the seed, so the three cases see the same sizes.

Fill orders. A fill plan lists the hole's pixels in fill order and, for each, the mixture weight of
every ordering: `single` uses ordering 0; `best_evidence` the ordering with the most observed pixels
before its first occluded pixel; `evidence_weighted` fills in the best_evidence order and predicts
each pixel with every ordering whose predecessors of that pixel are all known (observed or filled
before it), weighted by rank+1. Which orderings are usable depends only on the occlusion and the fill
order, never on pixel values, so one plan serves a whole batch, sampled or teacher-forced.

Metrics (nats; *_bits divide by ln 2), pooled over every occluded pixel of every image:
`l2` mean (sample - truth)^2; `nll_chain` mean -log p(true x_d | evidence, sampled earlier hole pixels);
`nll_exact` the same conditioning on the true earlier hole pixels (one forward, no sampling).
A model with several hidden-mask sets predicts with the uniform mixture of its masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

from farm_sweep.figures import save_figure
from farm_sweep.losses import ensemble_log_probs
from farm_sweep.models.made import FarmMADE

matplotlib.use("Agg")

CASES = ("best", "average", "worst")
FILLS = ("single", "best_evidence", "evidence_weighted")


def side_range(n: int) -> tuple[int, int]:
    """Inclusive range of an occlusion's side along an image side of n pixels."""
    low = max(1, n // 4)
    return low, max(low, 3 * n // 4)


def make_occlusions(case: str, count: int, height: int, width: int, seed: int) -> torch.Tensor:
    """`count` seeded rectangular occlusions of an H x W image, (count, H*W) bool, True = hidden."""
    _check("case", case, CASES)
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(count, height, width, dtype=torch.bool)
    for mask in masks:
        h, w = _randint(*side_range(height), generator), _randint(*side_range(width), generator)
        top, left = 0, 0
        if case == "worst":
            top, left = height - h, width - w
        elif case == "average":
            top, left = _randint(0, height - h, generator), _randint(0, width - w, generator)
        mask[top:top + h, left:left + w] = True
    return masks.view(count, -1)


@dataclass(frozen=True)
class FillPlan:
    """How one hole is filled: `pixels` (n,) in fill order, `weights` (k, n) of each ordering per pixel
    (each column sums to 1; 0 = that ordering cannot be used for that pixel)."""

    pixels: torch.Tensor
    weights: torch.Tensor


def fill_plan(ranks: torch.Tensor, hole: torch.Tensor, fill: str) -> FillPlan:
    """The fill plan of a (D,) bool hole for orderings with ranks (k, D)."""
    _check("fill", fill, FILLS)
    hole = hole.to(ranks.device)
    pixels = hole.nonzero().squeeze(1)
    hole_ranks = ranks[:, pixels]  # (k, n)
    leader = 0 if fill == "single" else int(hole_ranks.min(1).values.argmax())
    order = hole_ranks[leader].argsort()
    pixels, hole_ranks = pixels[order], hole_ranks[:, order]
    if fill == "evidence_weighted":
        evidence = (hole_ranks + 1) * (hole_ranks < _min_after(hole_ranks, ranks.shape[1]))
    else:
        evidence = torch.zeros_like(hole_ranks)
        evidence[leader] = 1
    return FillPlan(pixels, evidence.double() / evidence.sum(0))


def _min_after(values: torch.Tensor, beyond: int) -> torch.Tensor:
    """out[:, t] = min over s > t of values[:, s] (`beyond` for the last column)."""
    suffix = values.flip(1).cummin(1).values.flip(1)
    return torch.cat([suffix[:, 1:], torch.full_like(values[:, :1], beyond)], 1)


@torch.no_grad()
def inpaint(model: FarmMADE, images: torch.Tensor, occlusion: torch.Tensor, fill: str,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample the hole of every image (B, D), pixel by pixel in fill order, one batched forward each.

    Returns the filled images and the chain nll -log p(true x_d | evidence, sampled earlier pixels)
    per pixel (B, D), zero outside the hole. x_d = 1[u_d < p_d] with u ~ U(0,1) from `generator`."""
    plan = fill_plan(model.ranks, occlusion, fill)
    x = images * ~occlusion.to(images.device)
    nll = torch.zeros_like(images)
    noise = torch.rand(len(images), len(plan.pixels), generator=generator).to(images.device)
    for t, pixel in enumerate(plan.pixels.tolist()):
        log_one, log_zero = _mixture_log_probs(model, x, plan.weights[:, t:t + 1], plan.pixels[t:t + 1])
        truth = images[:, pixel]
        nll[:, pixel] = -(truth * log_one[:, 0] + (1 - truth) * log_zero[:, 0])
        x[:, pixel] = (noise[:, t] < log_one[:, 0].exp()).to(x.dtype)
    return x, nll


@torch.no_grad()
def nll_exact(model: FarmMADE, images: torch.Tensor, occlusion: torch.Tensor, fill: str) -> torch.Tensor:
    """Teacher-forced -log p(true x_d | evidence, true earlier hole pixels) per pixel (B, D), zero
    outside the hole: one forward of the orderings the plan uses, on the true images."""
    plan = fill_plan(model.ranks, occlusion, fill)
    log_one, log_zero = _mixture_log_probs(model, images, plan.weights, plan.pixels)
    truth = images[:, plan.pixels]
    nll = torch.zeros_like(images)
    nll[:, plan.pixels] = -(truth * log_one + (1 - truth) * log_zero)
    return nll


def _mixture_log_probs(model: FarmMADE, x: torch.Tensor, weights: torch.Tensor,
                       pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(x_d = 1), log p(x_d = 0)) at `pixels` (B, n) under the mixture with `weights` (k, n) of
    the orderings, each ordering itself the uniform mixture of the model's hidden-mask sets. Only the
    orderings with a nonzero weight somewhere are evaluated, all in one forward per mask set."""
    used = weights.any(1).nonzero().squeeze(1)
    active, logits = model.mask_index, []
    for mask in range(model.num_masks):
        model.set_mask(mask)
        logits.append(model(x, used)[..., pixels])  # (k', B, n)
    model.set_mask(active)
    mixture = weights[used].repeat(model.num_masks, 1) / model.num_masks
    return ensemble_log_probs(torch.cat(logits), mixture.to(x.dtype))


def evaluate_inpainting(model: FarmMADE, images: torch.Tensor, height: int, width: int, case: str, fill: str,
                        num_occlusions: int = 100, images_per_occlusion: int = 100,
                        seed: int = 0) -> dict[str, float]:
    """The paper protocol: occlusion j applied to the j-th block of `images_per_occlusion` images.

    With exactly num_occlusions * images_per_occlusion images they are used in order (the paper's 100 x
    100 = a whole 10,000-image split); with more, a seeded random subset is used (a prefix of
    binarized MNIST's test split is not a fair sample, DESIGN 4). Metrics pool every occluded pixel."""
    images = _protocol_images(images, num_occlusions * images_per_occlusion, seed)
    occlusions = make_occlusions(case, num_occlusions, height, width, seed)
    generator = torch.Generator().manual_seed(seed)
    totals = torch.zeros(3, dtype=torch.float64)
    for occlusion, batch in zip(occlusions, images.split(images_per_occlusion)):
        filled, chain = inpaint(model, batch, occlusion, fill, generator)
        exact = nll_exact(model, batch, occlusion, fill)
        l2 = (filled - batch).pow(2)[:, occlusion.to(batch.device)]
        totals += torch.stack([l2.sum(), chain.sum(), exact.sum()]).double().cpu()
    l2, chain, exact = (totals / (images_per_occlusion * occlusions.sum().item())).tolist()
    return {"l2": l2, "nll_chain": chain, "nll_exact": exact, "nll_chain_bits": chain / math.log(2),
            "nll_exact_bits": exact / math.log(2), "occluded_fraction": occlusions.float().mean().item()}


def _protocol_images(images: torch.Tensor, needed: int, seed: int) -> torch.Tensor:
    if needed > len(images):
        raise ValueError(f"the protocol needs {needed} images (occlusions x images per occlusion); "
                         f"only {len(images)} were given")
    if needed == len(images):
        return images
    generator = torch.Generator().manual_seed(seed)
    return images[torch.randperm(len(images), generator=generator)[:needed].to(images.device)]


def inpainting_figure(model: FarmMADE, images: torch.Tensor, height: int, width: int, path: Path, *,
                      baseline: FarmMADE | None = None, case: str = "average", seed: int = 0) -> Path:
    """A PNG like the paper's Figure 2 for up to 25 images sharing one occlusion: the original with the
    hole tinted red, the baseline's `single` fill (`baseline`, default the model itself), and the
    model's `evidence_weighted` fill; filled pixels are tinted blue."""
    images = images[:25]
    occlusion = make_occlusions(case, 1, height, width, seed)[0]
    panels = {"original": _tint(images, occlusion, (1.0, 0.2, 0.2), height, width)}
    for title, fill_model, fill in (("baseline (single ordering)", baseline or model, "single"),
                                    ("FARM (evidence weighted)", model, "evidence_weighted")):
        filled, _ = inpaint(fill_model, images, occlusion, fill, torch.Generator().manual_seed(seed))
        panels[title] = _tint(filled, occlusion, (0.3, 0.6, 1.0), height, width)
    figure, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    for axis, (title, panel) in zip(axes, panels.items()):
        axis.imshow(panel, interpolation="nearest")
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    return save_figure(figure, path)


def _tint(images: torch.Tensor, occlusion: torch.Tensor, color: tuple[float, float, float], height: int,
          width: int) -> np.ndarray:
    """Tile (n, D) binary images into one RGB grid, mixing `color` into the occluded pixels."""
    rgb = images.detach().cpu().float().view(-1, height, width, 1).repeat(1, 1, 1, 3)
    hole = occlusion.view(height, width, 1)
    rgb = torch.where(hole, 0.55 * rgb + 0.45 * torch.tensor(color), rgb)
    side = math.ceil(math.sqrt(len(rgb)))
    grid = torch.full((side * (height + 1) + 1, side * (width + 1) + 1, 3), 0.5)
    for index, image in enumerate(rgb):
        row, column = divmod(index, side)
        top, left = 1 + row * (height + 1), 1 + column * (width + 1)
        grid[top:top + height, left:left + width] = image
    return grid.numpy()


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def _check(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
