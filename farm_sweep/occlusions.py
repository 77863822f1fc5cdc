"""Occlusions and fill plans for inpainting (paper 3.4, DESIGN 4), shared by every model family.

Occlusions. An occlusion is a (D,) bool mask (True = hidden) of one axis-aligned rectangle. `best`
anchors it at the top-left corner (worst for the canonical raster order, so best for FARM), `worst` at the
bottom-right corner, `average` puts it anywhere. Two protocols draw them:
- `ours`: height uniform over the integers [max(1, H//4), max(1, 3H//4)], width independently over the
  same range for W (MNIST: 7..21 pixels each side, 1/16 to 9/16 of the image); `average` places the
  rectangle uniformly where it fits. The sizes depend only on the seed, so the three cases share them.
- `paper` (the FARM paper's code, DESIGN 4): per axis of n pixels draw a and b uniform over 0..n-1;
  `best` sets a = 0, `worst` sets b = n - 1, `average` keeps both; the rectangle spans min(a, b)..max(a, b)
  inclusive, so anything from one pixel to the whole image.

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
PROTOCOLS = ("ours", "paper")


def side_range(n: int) -> tuple[int, int]:
    """Inclusive range of an occlusion's side along an image side of n pixels."""
    low = max(1, n // 4)
    return low, max(low, 3 * n // 4)


def make_occlusions(case: str, count: int, height: int, width: int, seed: int,
                    protocol: str = "ours") -> torch.Tensor:
    """`count` seeded rectangular occlusions of an H x W image, (count, H*W) bool, True = hidden."""
    check_choice("case", case, CASES)
    check_choice("protocol", protocol, PROTOCOLS)
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(count, height, width, dtype=torch.bool)
    rectangle = _paper_rectangle if protocol == "paper" else _our_rectangle
    for mask in masks:
        top, bottom, left, right = rectangle(case, height, width, generator)
        mask[top:bottom + 1, left:right + 1] = True
    return masks.view(count, -1)


def _our_rectangle(case: str, height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """Inclusive (top, bottom, left, right), protocol `ours`: both sizes are drawn first, so every case sees
    the same sizes for the same seed."""
    h, w = randint(*side_range(height), generator), randint(*side_range(width), generator)
    top, left = {"best": (0, 0), "worst": (height - h, width - w)}.get(case) or (
        randint(0, height - h, generator), randint(0, width - w, generator))
    return top, top + h - 1, left, left + w - 1


def _paper_rectangle(case: str, height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """Inclusive (top, bottom, left, right), protocol `paper`: per axis of n pixels a, b uniform over 0..n-1."""
    (top, bottom), (left, right) = (_paper_span(case, n, generator) for n in (height, width))
    return top, bottom, left, right


def _paper_span(case: str, n: int, generator: torch.Generator) -> tuple[int, int]:
    a, b = randint(0, n - 1, generator), randint(0, n - 1, generator)
    a = 0 if case == "best" else a
    b = n - 1 if case == "worst" else b
    return min(a, b), max(a, b)


@dataclass(frozen=True)
class FillPlan:
    """How one hole is filled: `pixels` (n,) in fill order, `weights` (k, n) of each ordering per pixel
    (each column sums to 1; 0 = that ordering cannot be used for that pixel), and `leader`, the ordering
    whose order the fill follows (usable for every hole pixel)."""

    pixels: torch.Tensor
    weights: torch.Tensor
    leader: int


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
    return FillPlan(pixels, evidence.double() / evidence.sum(0), leader)


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
