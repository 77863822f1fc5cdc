"""FARM + PixelCNN++ (paper section 4): k orderings as k symmetry transforms of the image.

Ordering i is a transform T_i of the square (flips, transposes, rotations): p_i(x) = p(T_i x), where p
is one causal PixelCNN (`shared`) or the i-th of k PixelCNNs (`separate`). The network runs on T_i x and
its outputs are mapped back with T_i^-1, so every tensor here lives on the ORIGINAL pixel grid.

Transform indices are those of `orderings.SYMMETRIES`, so transform i with the raster network visits the
pixels exactly as ordering `symmetric_ordering("raster", i)` of FARM+MADE:
    0 identity        1 rot180 (reversed raster)   2 transpose        3 antitranspose
    4 flip_lr         5 flip_ud                    6 rot90_ccw        7 rot90_cw
The image is rotated; the ordering's causal mask on the original grid is the canonical one rotated the
other way. The paper's k=2 pair is the canonical mask and the mask rotated a quarter turn, whose context
is every column to the LEFT of a pixel (its best case is a hole in the top right): that is rot90_cw
(columns left to right, each bottom to top). `PAPER_TRANSFORMS` nests the paper's sets:
    k=1 [identity]   k=2 [identity, rot90_cw]   k=4 + [rot180, rot90_ccw] (the four rotations)
    k=8 + [transpose, antitranspose, flip_lr, flip_ud]
`transform_indices(k, "symmetries")` gives the first k indices instead (FARM+MADE's raster sets).

Losses and likelihoods over the k orderings are in farm_sweep.pixelcnn.losses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from farm_sweep.orderings import SYMMETRIES, evidence_weights
from farm_sweep.pixelcnn.logistic_mixture import log_prob
from farm_sweep.pixelcnn.network import PixelCNNConfig, build_pixelcnn

TRANSFORM_NAMES = ("identity", "rot180", "transpose", "antitranspose", "flip_lr", "flip_ud", "rot90_ccw", "rot90_cw")
PAPER_TRANSFORMS = (0, 7, 1, 6, 2, 3, 4, 5)
TRANSFORM_FAMILIES = ("paper", "symmetries")
WEIGHT_SHARING = ("shared", "separate")


def transform_indices(k: int, family: str = "paper") -> tuple[int, ...]:
    """The k transforms of a family: `paper` (PAPER_TRANSFORMS[:k]) or `symmetries` (0..k-1)."""
    if family not in TRANSFORM_FAMILIES:
        raise ValueError(f"transform family {family!r}: choose one of {TRANSFORM_FAMILIES}")
    if not 1 <= k <= len(SYMMETRIES):
        raise ValueError(f"k={k}: the square has {len(SYMMETRIES)} symmetry transforms")
    return PAPER_TRANSFORMS[:k] if family == "paper" else tuple(range(k))


def transform(x: torch.Tensor, index: int) -> torch.Tensor:
    """T_index on the last two dims: flip (rows, columns) as listed, then transpose.

    Pixel (a, b) of T x is pixel sigma(a, b) of x, where sigma is the ordering's coordinate map, so the
    raster scan of T x is ordering `index`."""
    transposed, flip_rows, flip_cols = SYMMETRIES[index]
    dims = [d for d, flip in ((-2, flip_rows), (-1, flip_cols)) if flip]
    x = x.flip(dims) if dims else x
    return x.transpose(-2, -1) if transposed else x


def inverse_transform(x: torch.Tensor, index: int) -> torch.Tensor:
    """T_index^-1: undo the transpose, then the flips."""
    transposed, flip_rows, flip_cols = SYMMETRIES[index]
    x = x.transpose(-2, -1) if transposed else x
    dims = [d for d, flip in ((-2, flip_rows), (-1, flip_cols)) if flip]
    return x.flip(dims) if dims else x


def transform_ranks(index: int, height: int, width: int, causal: str = "raster") -> torch.Tensor:
    """rank_i(d) on the original grid (H, W): how many pixels come before d in ordering i.

    raster: d's position in the raster scan of T_i x. antidiagonal: the number of pixels on earlier
    anti-diagonals of T_i x (the pixels a wavefront step conditions on)."""
    h, w = (width, height) if SYMMETRIES[index][0] else (height, width)
    if causal == "raster":
        grid = torch.arange(h * w).view(h, w)
    else:
        diagonal = (torch.arange(h)[:, None] + torch.arange(w)[None, :]).flatten()
        grid = (diagonal[None, :] < diagonal[:, None]).sum(1).view(h, w)
    return inverse_transform(grid, index)


def same_conditionings(transforms: Sequence[int], causal: str = "raster") -> list[tuple[int, int]]:
    """Pairs of transforms that give the same ordering, so the same conditioning. An anti-diagonal ordering
    depends only on row + column: transpose = identity, antitranspose = rot180, flip_lr = rot90_ccw,
    flip_ud = rot90_cw; every raster ordering is distinct."""
    ranks = [transform_ranks(index, 4, 4, causal) for index in transforms]
    return [(a, b) for i, a in enumerate(transforms) for j, b in enumerate(transforms)
            if i < j and torch.equal(ranks[i], ranks[j])]


class FarmPixelCNN(nn.Module):
    """k orderings of PixelCNN++ as image transforms; `params` runs them in one batched pass when shared."""

    def __init__(self, config: PixelCNNConfig, transforms: Sequence[int] = PAPER_TRANSFORMS[:2],
                 weight_sharing: str = "shared") -> None:
        super().__init__()
        if weight_sharing not in WEIGHT_SHARING:
            raise ValueError(f"weight_sharing={weight_sharing!r}; choose one of {WEIGHT_SHARING}")
        if not transforms or len(set(transforms)) < len(transforms) or not set(transforms) <= set(range(8)):
            raise ValueError(f"transforms={list(transforms)}: give distinct indices in 0..7")
        same = same_conditionings(transforms, config.causal)
        if same:
            names = ", ".join(f"{TRANSFORM_NAMES[a]} = {TRANSFORM_NAMES[b]}" for a, b in same)
            raise ValueError(f"transforms={list(transforms)} with the {config.causal} network repeat orderings "
                             f"({names}): each would count twice in the mixture and the evidence weights")
        self.config = config
        self.transforms = tuple(transforms)
        self.weight_sharing = weight_sharing
        count = 1 if weight_sharing == "shared" else len(self.transforms)
        self.nets = nn.ModuleList(build_pixelcnn(config) for _ in range(count))

    @property
    def k(self) -> int:
        return len(self.transforms)

    def params(self, x: torch.Tensor, orderings: Sequence[int] | None = None) -> torch.Tensor:
        """Mixture parameters of every pixel under every ordering, on the original grid: (k, B, P, H, W).

        `orderings` (positions in `transforms`) restricts the pass to a subset, e.g. one for `mc` training."""
        chosen = list(range(self.k)) if orderings is None else list(orderings)
        views = {i: transform(x, self.transforms[i]) for i in chosen}
        if self.weight_sharing == "separate":
            outs = {i: self.nets[i](view) for i, view in views.items()}
        else:
            outs = {}
            for shape in {view.shape for view in views.values()}:  # one pass per shape: one if H == W
                group = [i for i, view in views.items() if view.shape == shape]
                batched = self.nets[0](torch.cat([views[i] for i in group]))
                outs.update(zip(group, batched.chunk(len(group)), strict=True))
        return torch.stack([inverse_transform(outs[i], self.transforms[i]) for i in chosen])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """log p_i(x_d | x before d in ordering i) for every ordering and pixel: (k, B, H, W)."""
        return ordering_log_probs(self.params(x), x)

    def ranks(self, height: int, width: int) -> torch.Tensor:
        """rank_i(d) for every ordering, (k, H, W)."""
        return torch.stack([transform_ranks(t, height, width, self.config.causal) for t in self.transforms])

    def evidence_weights(self, height: int, width: int) -> torch.Tensor:
        """w_i,d = (rank_i(d) + 1) / sum_j (rank_j(d) + 1), (k, H, W)."""
        return evidence_weights(self.ranks(height, width))


def ordering_log_probs(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel log-likelihoods (k, B, H, W) from params (k, B, P, H, W) and x (B, C, H, W)."""
    k = params.shape[0]
    return log_prob(x.repeat(k, 1, 1, 1), params.flatten(0, 1)).unflatten(0, (k, -1))
