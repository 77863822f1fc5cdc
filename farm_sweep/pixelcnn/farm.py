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

Losses (all nats per image, batch mean; `bits_per_dim` converts): the image-level main terms and, for
the divergence of eq 6, the generalized JSD per SUB-PIXEL: the JSD over 256^3 joint pixel values is out
of reach, so each channel c of pixel d contributes the divergence between the k categoricals
p_i(x_d,c = . | context of d under ordering i, TRUE x_d,<c) over its 256 values: the chain-rule factors
of p_i(x_d | context), treated as eq 4 treats MADE's per-pixel Bernoullis (D = C·H·W dimensions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from farm_sweep.losses import DIVERGENCES, LOSSES
from farm_sweep.models.logistic_mixture import channel_log_probs, log_prob
from farm_sweep.models.pixelcnn import PixelCNNConfig, build_pixelcnn
from farm_sweep.orderings import SYMMETRIES, evidence_weights

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


class FarmPixelCNN(nn.Module):
    """k orderings of PixelCNN++ as image transforms; `params` runs them in one batched pass when shared."""

    def __init__(self, config: PixelCNNConfig, transforms: Sequence[int] = PAPER_TRANSFORMS[:2],
                 weight_sharing: str = "shared") -> None:
        super().__init__()
        if weight_sharing not in WEIGHT_SHARING:
            raise ValueError(f"weight_sharing={weight_sharing!r}; choose one of {WEIGHT_SHARING}")
        if not transforms or len(set(transforms)) < len(transforms) or not set(transforms) <= set(range(8)):
            raise ValueError(f"transforms={list(transforms)}: give distinct indices in 0..7")
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


# ---------------------------------------------------------------- likelihoods and losses


def ordering_log_probs(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel log-likelihoods (k, B, H, W) from params (k, B, P, H, W) and x (B, C, H, W)."""
    k = params.shape[0]
    return log_prob(x.repeat(k, 1, 1, 1), params.flatten(0, 1)).unflatten(0, (k, -1))


def ordering_nll(log_px: torch.Tensor) -> torch.Tensor:
    """Eq 1: (1/k) sum_i -log p_i(x), nats per image (batch mean), from (k, B, H, W)."""
    return -log_px.sum((-2, -1)).mean()


def mixture_nll(log_px: torch.Tensor) -> torch.Tensor:
    """-log (1/k) sum_i p_i(x), nats per image (batch mean): the ensemble's exact likelihood."""
    k = log_px.shape[0]
    return (math.log(k) - torch.logsumexp(log_px.sum((-2, -1)), dim=0)).mean()


def ensemble_nll(log_px: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Eq 3: -sum_d log x̂_d with x̂_d = sum_i w_i,d p_i(x_d | ...) (eq 2), nats per image (batch mean).

    weights (k, H, W) sum to one over the orderings. A training loss, not a normalized likelihood."""
    mixed = torch.logsumexp(weights.log()[:, None] + log_px, dim=0)  # (B, H, W)
    return -mixed.sum((-2, -1)).mean()


def generalized_jsd(log_p: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i w_i KL(p_i || sum_j w_j p_j) for k categoricals log_p (k, ..., V); w_i = 1/k by default.

    `weights` broadcasts against log_p.shape[:-1]. Returns the divergence per distribution, shape (...)."""
    k = log_p.shape[0]
    log_w = torch.full((k,) + (1,) * (log_p.dim() - 2), -math.log(k)) if weights is None else weights.log()
    log_w = log_w.to(log_p).unsqueeze(-1)
    log_mixture = torch.logsumexp(log_w + log_p, dim=0)
    kl = (log_p.exp() * (log_p - log_mixture)).sum(-1)
    return (log_w.squeeze(-1).exp() * kl).sum(0)


def divergence(params: torch.Tensor, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Eq 6's divergence per sub-pixel (module doc), summed over sub-pixels: nats per image (batch mean).

    weights None: the generalized JSD (uniform 1/k, `jsd`); weights (k, H, W): evidence-weighted KL to
    the evidence-weighted mixture (`kl`, eq 5). Memory: k·B·C·M·H·W·256 floats."""
    k = params.shape[0]
    log_p = channel_log_probs(x.repeat(k, 1, 1, 1), params.flatten(0, 1)).unflatten(0, (k, -1))
    weights = None if weights is None else weights[:, None, None]  # (k, 1, 1, H, W) over (k, B, C, H, W)
    return generalized_jsd(log_p, weights).sum((-3, -2, -1)).mean()


def farm_loss(params: torch.Tensor, x: torch.Tensor, weights: torch.Tensor, loss: str = "mc",
              divergence_name: str = "none",
              divergence_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """total = main + λ · divergence, nats per image. `mc`: eq 1 over the orderings in `params` (pass
    one ordering's params to train one per minibatch); `ensemble`: eq 3. Divergence `jsd` or `kl`."""
    log_px = ordering_log_probs(params, x)
    if loss == "mc":
        main = ordering_nll(log_px)
    elif loss == "ensemble":
        main = ensemble_nll(log_px, weights)
    else:
        raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
    parts = {"main_loss": main.detach()}
    if divergence_name == "none":
        return main, parts
    if divergence_name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence_name!r}; choose one of {DIVERGENCES}")
    div = divergence(params, x, weights if divergence_name == "kl" else None)
    parts["divergence"] = div.detach()
    return main + divergence_weight * div, parts


def bits_per_dim(nats_per_image: torch.Tensor | float, dims: int) -> torch.Tensor | float:
    """Nats per image -> bits per dimension (dims = C·H·W, e.g. 3072 for CIFAR-10)."""
    return nats_per_image / (dims * math.log(2.0))
