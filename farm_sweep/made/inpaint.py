"""Inpainting with a FARM+MADE (paper 3.4, DESIGN 4): sampling a hole and the l2 / nll_chain / nll_exact
metrics, over the occlusions and fill plans of farm_sweep.occlusions.

Metrics (nats; *_bits divide by ln 2), pooled over every occluded pixel of every image:
`l2` mean (sample - truth)^2; `nll_chain` mean -log p(true x_d | evidence, sampled earlier hole pixels);
`nll_exact` the same conditioning on the true earlier hole pixels (one forward, no sampling).
A model with several hidden-mask sets predicts with the uniform mixture of its masks.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

from farm_sweep.figures import save_figure
from farm_sweep.inference import inference
from farm_sweep.losses import ensemble_log_probs
from farm_sweep.made.network import FarmMADE
from farm_sweep.occlusions import fill_plan, make_occlusions

matplotlib.use("Agg")

@inference
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


@inference
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
