"""Occlusions and fill plans for inpainting (paper 3.4, DESIGN 4), shared by every model family.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CASES = ("best", "average", "worst")
FILLS = ("single", "best_evidence", "evidence_weighted")


def side_range(n: int) -> tuple[int, int]:
    """Inclusive range of an occlusion's side along an image side of n pixels."""
    low = max(1, n // 4)
    return low, max(low, 3 * n // 4)


def make_occlusions(case: str, count: int, height: int, width: int, seed: int) -> torch.Tensor:
    """`count` seeded rectangular occlusions of an H x W image, (count, H*W) bool, True = hidden."""
    check_choice("case", case, CASES)
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(count, height, width, dtype=torch.bool)
    for mask in masks:
        h, w = randint(*side_range(height), generator), randint(*side_range(width), generator)
        top, left = 0, 0
        if case == "worst":
            top, left = height - h, width - w
        elif case == "average":
            top, left = randint(0, height - h, generator), randint(0, width - w, generator)
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
    check_choice("fill", fill, FILLS)
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


def randint(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform integer in [low, high]."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
