"""Inpainting with a FARM+MADE (paper 3.4, DESIGN 4): sampling a hole and the l2 / nll_chain / nll_exact
metrics, over the occlusions and fill plans of farm_sweep.occlusions.

Metrics (nats; *_bits divide by ln 2), pooled over every occluded pixel of every image:
`l2` mean (sample - truth)^2; `nll_chain` mean -log p(true x_d | evidence, sampled earlier hole pixels);
`nll_exact` the same conditioning on the true earlier hole pixels (one forward, no sampling).

A model with M hidden-mask sets is the uniform mixture of M FARM models (mask set m: FARM_m), as its image
likelihood is (docs/models.md). Its hole distribution is that mixture's: FARM_m's fill (the plan's
ordering mixture, every conditional under mask set m), weighted by the posterior over mask sets given the
evidence. The evidence scored is the plan leader's prefix (the observed pixels before its first hole pixel,
exactly computable), and every hole pixel, true (nll_exact) or sampled (inpaint), updates the posterior;
so each pixel's conditional is sum_m post_m(evidence, earlier hole pixels) q_m(x_d | ...).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from farm_sweep.figures import save_figure, subplots
from farm_sweep.inference import inference
from farm_sweep.losses import ensemble_log_probs, pixel_log_probs
from farm_sweep.made.network import FarmMADE
from farm_sweep.made.staircase import logits_at
from farm_sweep.occlusions import FillPlan, fill_plan, make_occlusions


@inference
def inpaint(model: FarmMADE, images: torch.Tensor, occlusion: torch.Tensor, fill: str,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample the hole of every image (B, D) pixel by pixel in fill order: x_d = 1[u_d < p_d], u ~ U(0,1)
    from `generator`, p_d the model's conditional given the evidence and the pixels filled before d (with
    several mask sets, their mixture under the posterior over masks: module docstring).

    Returns the filled images and the chain nll -log p(true x_d | evidence, sampled earlier pixels) per
    pixel (B, D), zero outside the hole. Computed by fixed-point (Jacobi) iteration: every sweep predicts
    every hole pixel at once from the current fill, as nll_exact does from the truth, and resamples it with
    its own u_d. Pixel d's conditional depends only on the pixels filled before it (the plan uses an
    ordering for d only once its earlier hole pixels are filled), so sweep s fixes at least the first s
    pixels: the fill stops changing after at most n sweeps and is then the sequential fill, noise for noise,
    usually after far fewer (a sweep costs about one sequential step)."""
    plan = fill_plan(model.ranks, occlusion, fill)
    used, weights = _usable(plan.weights)
    needed = weights > 0
    noise = torch.rand(len(images), len(plan.pixels), generator=generator).to(images.device)
    x = images * ~occlusion.to(images.device)
    log_prior = _mask_log_prior(model, x, plan)[..., None]  # (M, B, 1)
    for _ in range(len(plan.pixels) + 1):  # the last sweep only confirms the fixed point
        log_one, log_zero = _fill_log_probs(_mask_logits(model, x, used, plan.pixels, needed), weights)
        current = x[:, plan.pixels]
        log_filled = torch.where(current.bool(), log_one, log_zero)
        log_posterior = log_prior + log_filled.cumsum(-1) - log_filled  # given the pixels filled before each
        mixed_one = _mixed(log_posterior, log_one)
        resampled = (noise < mixed_one.exp()).to(x.dtype)
        if torch.equal(resampled, current):
            break
        x[:, plan.pixels] = resampled
    truth = images[:, plan.pixels]
    nll = torch.zeros_like(images)
    nll[:, plan.pixels] = -(truth * mixed_one + (1 - truth) * _mixed(log_posterior, log_zero))
    return x, nll


@inference
def nll_exact(model: FarmMADE, images: torch.Tensor, occlusion: torch.Tensor, fill: str) -> torch.Tensor:
    """Teacher-forced -log p(true x_d | evidence, true earlier hole pixels) per pixel (B, D), zero
    outside the hole: one pass of the orderings the plan uses (per mask set) on the true images, each
    computing only the hole pixels it predicts (farm_sweep.made.staircase)."""
    plan = fill_plan(model.ranks, occlusion, fill)
    used, weights = _usable(plan.weights)
    logits = _mask_logits(model, images, used, plan.pixels, weights > 0)  # (M, k', B, n)
    log_one, log_zero = _fill_log_probs(logits, weights)
    truth = images[:, plan.pixels].bool()
    log_truth = torch.where(truth, log_one, log_zero)  # (M, B, n)
    log_posterior = _mask_log_prior(model, images, plan)[..., None] + log_truth.cumsum(-1) - log_truth
    nll = torch.zeros_like(images)
    nll[:, plan.pixels] = -_mixed(log_posterior, log_truth)
    return nll


def _usable(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The orderings with a nonzero weight somewhere in `weights` (k, n), and their weights (k', n)."""
    used = weights.any(1).nonzero().squeeze(1)
    return used, weights[used]


def _mask_logits(model: FarmMADE, x: torch.Tensor, orderings: torch.Tensor, pixels: torch.Tensor,
                 needed: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (M, k', B, n) of `orderings` at `pixels` under each of the M mask sets, computing only those
    outputs (farm_sweep.made.staircase; with `needed` (k', n), only where an ordering is used)."""
    per_mask = []
    for mask in range(model.num_masks):
        with model.using_mask(mask):
            per_mask.append(logits_at(model, x, orderings, pixels, needed))
    return torch.stack(per_mask)


def _fill_log_probs(logits: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q_m(x_d = 1), log q_m(x_d = 0)), each (M, B, n): the fill's predictor under each mask set m,
    the mixture with `weights` (k', n) of the orderings' logits (M, k', B, n)."""
    masks, orderings, batch, pixels = logits.shape
    flat = logits.transpose(0, 1).reshape(orderings, masks * batch, pixels)
    log_one, log_zero = ensemble_log_probs(flat, weights.to(logits.dtype))
    return log_one.view(masks, batch, pixels), log_zero.view(masks, batch, pixels)


def _mask_log_prior(model: FarmMADE, x: torch.Tensor, plan: FillPlan) -> torch.Tensor:
    """log p_leader,m(evidence before the leader's first hole pixel) per mask set m, (M, B): the
    unnormalized log posterior over mask sets given that evidence (a uniform prior). Zero with one mask set."""
    rank = model.ranks[plan.leader]
    prefix = (rank < rank[plan.pixels[0]]).nonzero()[:, 0]
    if model.num_masks == 1 or not len(prefix):
        return torch.zeros(model.num_masks, len(x), dtype=x.dtype, device=x.device)
    logits = _mask_logits(model, x, torch.tensor([plan.leader], device=x.device), prefix)[:, 0]  # (M, B, p)
    return pixel_log_probs(logits, x[:, prefix]).sum(-1)


def _mixed(log_posterior: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """log sum_m post_m q_m: the mixture over mask sets (leading axis) under the (unnormalized) log
    posterior; log_q itself with one mask set."""
    if len(log_q) == 1:
        return log_q[0]
    return torch.logsumexp(log_posterior.log_softmax(0) + log_q, 0)


def evaluate_inpainting(model: FarmMADE, images: torch.Tensor, height: int, width: int, case: str, fill: str,
                        num_occlusions: int = 100, images_per_occlusion: int = 100,
                        seed: int = 0, protocol: str = "ours") -> dict[str, float]:
    """Occlusion j applied to the j-th block of `images_per_occlusion` images.

    With exactly num_occlusions * images_per_occlusion images they are used in order (the paper's 100 x
    100 = a whole 10,000-image split); with more, a seeded random subset is used (a prefix of
    binarized MNIST's test split is not a fair sample, DESIGN 4). Protocol `ours` pools every occluded pixel
    of every image; `paper` averages each occlusion's own mean (over its hole pixels and its images), then
    the occlusions, as the paper's code does (farm_sweep.occlusions draws the occlusions of each)."""
    images = _protocol_images(images, num_occlusions * images_per_occlusion, seed)
    occlusions = make_occlusions(case, num_occlusions, height, width, seed, protocol)
    generator = torch.Generator().manual_seed(seed)
    sums = []  # per occlusion: summed l2, nll_chain, nll_exact over its hole pixels and images
    for occlusion, batch in zip(occlusions, images.split(images_per_occlusion)):
        filled, chain = inpaint(model, batch, occlusion, fill, generator)
        exact = nll_exact(model, batch, occlusion, fill)
        l2 = (filled - batch).pow(2)[:, occlusion.to(batch.device)]
        sums.append(torch.stack([l2.sum(), chain.sum(), exact.sum()]).double().cpu())
    counts = occlusions.sum(1).double() * images_per_occlusion  # (occlusions,) values averaged per occlusion
    per_occlusion = torch.stack(sums) / counts[:, None]
    pooled = torch.stack(sums).sum(0) / counts.sum()
    l2, chain, exact = (per_occlusion.mean(0) if protocol == "paper" else pooled).tolist()
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
    figure, axes = subplots(1, 3, figsize=(9, 3.4))
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
