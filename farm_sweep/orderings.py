"""Pixel orderings: the families of DESIGN section 2, their ranks and evidence weights.

An ordering over an H x W image is a permutation `order` of the D = H*W flat (row-major) pixel indices:
`order[t]` is the pixel visited at step t. Its inverse, `rank[d]`, is the number of pixels before d.

Every deterministic family starts from a base curve on an h x w grid and comes in 8 variants, the
symmetries of the square applied to the curve. Variant index order follows the paper's k-subsets:
k=1 {identity}, k=2 {+ reversed (180 degrees)}, k=4 {+ transpose, transpose reversed}, k=8 all eight.
"""

from __future__ import annotations

import numpy as np
import torch

Curve = list[tuple[int, int]]

# (transpose, flip rows, flip columns) per variant; for a raster base, variant 1 is the reversed raster.
SYMMETRIES: tuple[tuple[bool, bool, bool], ...] = (
    (False, False, False),
    (False, True, True),
    (True, False, False),
    (True, True, True),
    (False, False, True),
    (False, True, False),
    (True, False, True),
    (True, True, False),
)
PARTIAL_SHUFFLE_WINDOW = 4


def _raster(h: int, w: int) -> Curve:
    return [(r, c) for r in range(h) for c in range(w)]


def _snake(h: int, w: int) -> Curve:
    """Boustrophedon: left to right on even rows, right to left on odd rows."""
    return [(r, c if r % 2 == 0 else w - 1 - c) for r in range(h) for c in range(w)]


def _diagonal(h: int, w: int) -> Curve:
    """Anti-diagonals r+c = s in turn, alternating direction (the JPEG zig-zag)."""
    curve: Curve = []
    for s in range(h + w - 1):
        cells = [(r, s - r) for r in range(max(0, s - w + 1), min(h, s + 1))]
        curve += cells if s % 2 else cells[::-1]
    return curve


def _s_curve(h: int, w: int) -> Curve:
    """A meander through horizontal bands two rows high: each band is swept column by column,
    going down then up inside the band, and consecutive bands alternate horizontal direction.
    Steps inside a band move to a neighbour; between bands the path may jump one row."""
    curve: Curve = []
    for band, top in enumerate(range(0, h, 2)):
        rows = list(range(top, min(top + 2, h)))
        columns = range(w) if band % 2 == 0 else range(w - 1, -1, -1)
        for step, c in enumerate(columns):
            curve += [(r, c) for r in (rows if step % 2 == 0 else rows[::-1])]
    return curve


def _hilbert(h: int, w: int) -> Curve:
    """Generalized Hilbert curve ("gilbert") for any rectangle: a continuous space-filling path."""
    curve: Curve = []

    def sign(v: int) -> int:
        return (v > 0) - (v < 0)

    def walk(x: int, y: int, ax: int, ay: int, bx: int, by: int) -> None:
        width, height = abs(ax + ay), abs(bx + by)
        dax, day, dbx, dby = sign(ax), sign(ay), sign(bx), sign(by)
        if height == 1:
            curve.extend((y + day * i, x + dax * i) for i in range(width))
            return
        if width == 1:
            curve.extend((y + dby * i, x + dbx * i) for i in range(height))
            return
        ax2, ay2, bx2, by2 = ax // 2, ay // 2, bx // 2, by // 2
        if 2 * width > 3 * height:
            if abs(ax2 + ay2) % 2 and width > 2:
                ax2, ay2 = ax2 + dax, ay2 + day
            walk(x, y, ax2, ay2, bx, by)
            walk(x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by)
        else:
            if abs(bx2 + by2) % 2 and height > 2:
                bx2, by2 = bx2 + dbx, by2 + dby
            walk(x, y, bx2, by2, ax2, ay2)
            walk(x + bx2, y + by2, ax, ay, bx - bx2, by - by2)
            walk(x + (ax - dax) + (bx2 - dbx), y + (ay - day) + (by2 - dby), -bx2, -by2, -(ax - ax2), -(ay - ay2))

    if w >= h:
        walk(0, 0, w, 0, 0, h)
    else:
        walk(0, 0, 0, h, w, 0)
    return curve


BASE_CURVES = {
    "raster": _raster,
    "snake": _snake,
    "diagonal": _diagonal,
    "s_curve": _s_curve,
    "hilbert": _hilbert,
}
FAMILIES: tuple[str, ...] = (*BASE_CURVES, "random", "partially_random")


def max_orderings(family: str) -> int | None:
    """How many distinct orderings a family offers (None: unlimited)."""
    _check_family(family)
    return len(SYMMETRIES) if family in BASE_CURVES else None


def symmetric_ordering(family: str, variant: int, height: int, width: int) -> torch.Tensor:
    """Variant `variant` (0..7) of a deterministic family's curve, as a (D,) permutation."""
    transpose, flip_rows, flip_cols = SYMMETRIES[variant]
    h, w = (width, height) if transpose else (height, width)
    order = []
    for r, c in BASE_CURVES[family](h, w):
        if transpose:
            r, c = c, r
        r = height - 1 - r if flip_rows else r
        c = width - 1 - c if flip_cols else c
        order.append(r * width + c)
    return torch.tensor(order, dtype=torch.long)


def make_orderings(family: str, k: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """The first k orderings of a family, shape (k, H*W); random families are seeded."""
    _check_family(family)
    limit = max_orderings(family)
    if k < 1 or (limit is not None and k > limit):
        raise ValueError(f"k={k} orderings requested, but family {family!r} offers 1..{limit}")
    if family in BASE_CURVES:
        orders = torch.stack([symmetric_ordering(family, i, height, width) for i in range(k)])
        if len(set(map(tuple, orders.tolist()))) < k:
            raise ValueError(f"family {family!r} has fewer than {k} distinct variants on a "
                             f"{height}x{width} image (its curve is symmetric); ask for fewer orderings")
        return orders
    rng = np.random.default_rng(seed)
    d = height * width
    if family == "random":
        return torch.from_numpy(np.stack([rng.permutation(d) for _ in range(k)])).long()
    return torch.stack([_locally_shuffled(symmetric_ordering("raster", i % 8, height, width), rng)
                        for i in range(k)])


def _locally_shuffled(order: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Raster with local shuffles: steps permuted inside consecutive windows."""
    steps = np.arange(len(order))
    for start in range(0, len(order), PARTIAL_SHUFFLE_WINDOW):
        window = steps[start:start + PARTIAL_SHUFFLE_WINDOW]
        steps[start:start + PARTIAL_SHUFFLE_WINDOW] = rng.permutation(window)
    return order[torch.from_numpy(steps)]


def ranks(orders: torch.Tensor) -> torch.Tensor:
    """rank[i, d] = number of pixels before pixel d in ordering i (the inverse permutation)."""
    positions = torch.arange(orders.shape[-1], device=orders.device).expand_as(orders)
    return torch.empty_like(orders).scatter_(-1, orders, positions)


def evidence_weights(rank: torch.Tensor) -> torch.Tensor:
    """w[i, d] = (rank_i(d) + 1) / sum_j (rank_j(d) + 1): the share of evidence ordering i has at d."""
    evidence = rank.double() + 1
    return (evidence / evidence.sum(0, keepdim=True)).float()


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown ordering family {family!r}; choose one of {', '.join(FAMILIES)}")
