"""Inpainting with FARM+PixelCNN++ on colour images (paper 4.4): occlusions, hole bits/dim, fills, figure.

Occlusions (H x W, True = hidden), seeded; the rectangle sizes come from farm_sweep.occlusions.side_range
(H//4 .. 3H//4 per side, 8..24 on CIFAR-10) and depend only on the seed, so the cases see the same sizes:
  `best`      anchored at the top-right corner: the canonical raster order sees only the rows above it,
              the paper's rotated order (rot90_cw, columns left to right) every column to its left;
  `average`   a random rectangle in the middle: at least H//8 (W//8) pixels from every border;
  `top_half`  the top H//2 rows (no randomness): raster sees nothing, bottom-up orders see the bottom half.

Fill plans are farm_sweep.occlusions.fill_plan's (`single` = ordering 0, the canonical baseline;
`best_evidence` = the ordering with the most observed pixels before its first hidden pixel;
`evidence_weighted` = that fill order, each pixel predicted by the mixture of every ordering whose
predecessors of the pixel are all known, weights rank + 1). The plan needs a strict order, so an
`antidiagonal` network's ranks (ties along each anti-diagonal) are broken raster-wise inside a diagonal:
a conservative choice (an ordering is never used before its whole context is known).

Metrics per pixel are the whole RGB pixel's -log p (nats); bits/dim divide by C ln 2:
  `bpd_exact`: teacher-forced, every hole pixel conditioned on the evidence and the TRUE earlier hole
               pixels: one forward per ordering, no sampling: the exact likelihood of the hole.
  `bpd_chain`: conditioned on the SAMPLED earlier hole pixels (the paper's protocol), from `inpaint`.
  `classifier_score`: of the inpainted images, under the dataset's classifier (the paper's Inception score).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from farm_sweep.figures import save_figure, subplots
from farm_sweep.inference import inference
from farm_sweep.occlusions import FILLS, FillPlan, fill_plan, randint, side_range
from farm_sweep.orderings import ranks
from farm_sweep.pixelcnn.farm import FarmPixelCNN, ordering_log_probs
from farm_sweep.pixelcnn.logistic_mixture import log_prob, sample, to_unit
from farm_sweep.speed_quality import Scorer

CASES = ("best", "average", "top_half")


def make_occlusions(case: str, count: int, height: int, width: int, seed: int) -> torch.Tensor:
    """`count` seeded occlusions, (count, H, W) bool, True = hidden."""
    if case not in CASES:
        raise ValueError(f"unknown case {case!r}; choose one of {', '.join(CASES)}")
    generator = torch.Generator().manual_seed(seed)
    sizes = [tuple(randint(*side_range(n), generator) for n in (height, width)) for _ in range(count)]
    masks = torch.zeros(count, height, width, dtype=torch.bool)
    margin_rows, margin_cols = max(1, height // 8), max(1, width // 8)
    for mask, (h, w) in zip(masks, sizes):  # positions are drawn after all the sizes
        if case == "top_half":
            mask[:height // 2] = True
        elif case == "best":
            mask[:h, width - w:] = True
        else:
            h, w = min(h, height - 2 * margin_rows), min(w, width - 2 * margin_cols)
            top = randint(margin_rows, height - margin_rows - h, generator)
            left = randint(margin_cols, width - margin_cols - w, generator)
            mask[top:top + h, left:left + w] = True
    return masks


def plan_for(model: FarmPixelCNN, occlusion: torch.Tensor, fill: str) -> FillPlan:
    """farm_sweep.occlusions' fill plan for a (H, W) occlusion, with the model's orderings as strict ranks."""
    height, width = occlusion.shape
    strict = ranks(model.ranks(height, width).flatten(1).argsort(dim=1, stable=True))
    return fill_plan(strict, occlusion.flatten(), fill)


@inference
def hole_nll_exact(model: FarmPixelCNN, x: torch.Tensor, occlusion: torch.Tensor, fill: str) -> torch.Tensor:
    """Teacher-forced -log p(true x_d | evidence, true earlier hole pixels) of every hole pixel, (B, n) in
    fill order, for images x (B, C, H, W) in [-1, 1]: one forward of each ordering the plan uses."""
    plan = plan_for(model, occlusion, fill)
    used = plan.weights.any(1).nonzero().squeeze(1).tolist()
    log_px = ordering_log_probs(model.params(x, used), x).flatten(2)[:, :, plan.pixels.to(x.device)]  # (k', B, n)
    log_w = plan.weights[used].to(x).log().unsqueeze(1)
    return -torch.logsumexp(log_w + log_px, dim=0)


@inference
def inpaint(model: FarmPixelCNN, x: torch.Tensor, occlusion: torch.Tensor, fill: str,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample the hole of every image x (B, C, H, W) in [-1, 1], pixel by pixel in the plan's order, one
    forward of the usable orderings per pixel (batched over the images). Each pixel comes from the
    mixture of the usable orderings: an ordering is picked by its weight, then the pixel is drawn from it.

    Returns the filled images and the chain nll -log p(true x_d | evidence, sampled earlier pixels) (B, n)."""
    plan = plan_for(model, occlusion, fill)
    batch, channels, height, width = x.shape
    truth, filled = x, x.masked_fill(occlusion.to(x.device), 0.0)
    nll = torch.zeros(batch, len(plan.pixels), dtype=x.dtype, device=x.device)
    for t, pixel in enumerate(plan.pixels.tolist()):
        row, col = divmod(pixel, width)
        usable = plan.weights[:, t].nonzero().squeeze(1)
        params = model.params(filled, usable.tolist())[:, :, :, row:row + 1, col:col + 1]  # (k', B, P, 1, 1)
        weights = plan.weights[usable, t].to(x)
        log_p = torch.stack([log_prob(truth[:, :, row:row + 1, col:col + 1], p)[:, 0, 0] for p in params])
        nll[:, t] = -torch.logsumexp(weights.log()[:, None] + log_p, dim=0)
        pick = torch.multinomial(weights.cpu().expand(batch, -1), 1, generator=generator).squeeze(1)
        chosen = params[pick.to(x.device), torch.arange(batch, device=x.device)]  # (B, P, 1, 1)
        noise = torch.rand(batch, 1 + channels, 1, 1, generator=generator).to(x)
        filled[:, :, row, col] = sample(chosen, channels, noise)[:, :, 0, 0]
    return filled, nll


def evaluate_inpainting(model: FarmPixelCNN, images: torch.Tensor, case: str, fills: tuple[str, ...] = FILLS,
                        num_occlusions: int = 15, images_per_occlusion: int = 16, seed: int = 0,
                        scorer: Scorer | None = None) -> dict[str, float]:
    """Hole bits/dim per fill, pooled over pixels: teacher-forced (`<fill>/bpd_exact`) and along the fill's
    own samples (`<fill>/bpd_chain`, the paper's Table 3 kind); with a `scorer`, the classifier score of the
    inpainted images (`<fill>/classifier_score`, Table 3's other column). Occlusion j applies to the j-th
    block of `images_per_occlusion` uint8 images (N, C, H, W) (the paper: 15 batches of 16); every fill
    samples with the same seeded noise."""
    needed = num_occlusions * images_per_occlusion
    if len(images) < needed:
        raise ValueError(f"{needed} images needed (occlusions x images per occlusion); {len(images)} given")
    device = next(model.parameters()).device
    _, channels, height, width = images.shape
    occlusions = make_occlusions(case, num_occlusions, height, width, seed)
    generators = {fill: torch.Generator().manual_seed(seed) for fill in fills}
    exact, chain, filled = dict.fromkeys(fills, 0.0), dict.fromkeys(fills, 0.0), {fill: [] for fill in fills}
    for occlusion, block in zip(occlusions, images[:needed].split(images_per_occlusion)):
        x = to_unit(block).to(device)
        for fill in fills:
            exact[fill] += hole_nll_exact(model, x, occlusion, fill).double().sum().item()
            inpainted, nll = inpaint(model, x, occlusion, fill, generators[fill])
            chain[fill] += nll.double().sum().item()
            filled[fill].append(inpainted.cpu())
    per_bit = images_per_occlusion * occlusions.sum().item() * channels * math.log(2)  # hidden sub-pixels x ln 2
    metrics = {"occluded_fraction": occlusions.float().mean().item()}
    for fill in fills:
        metrics |= {f"{fill}/bpd_exact": exact[fill] / per_bit, f"{fill}/bpd_chain": chain[fill] / per_bit}
        if scorer is not None:
            metrics[f"{fill}/classifier_score"] = scorer.classifier_score(torch.cat(filled[fill]))
    return metrics


def inpainting_figure(model: FarmPixelCNN, images: torch.Tensor, path: Path, *, baseline: FarmPixelCNN | None = None,
                      case: str = "best", seed: int = 0) -> Path:
    """A PNG like the paper's Table 4 for up to 8 uint8 images sharing one occlusion: rows original, hole
    (grey), the baseline's canonical fill (`single` of `baseline`, default the model itself) and the
    model's FARM fill (`evidence_weighted`)."""
    images = images[:8]
    device = next(model.parameters()).device
    occlusion = make_occlusions(case, 1, images.shape[-2], images.shape[-1], seed)[0]
    x = to_unit(images).to(device)
    rows = {"original": x, "hole": x.masked_fill(occlusion.to(device), 0.0)}
    for title, fill_model, fill in (("canonical", baseline or model, "single"), ("FARM", model, "evidence_weighted")):
        rows[title], _ = inpaint(fill_model, x, occlusion, fill, torch.Generator().manual_seed(seed))
    figure, axes = subplots(len(rows), len(images), figsize=(1.3 * len(images), 1.4 * len(rows)), squeeze=False)
    for r, (title, batch) in enumerate(rows.items()):
        for c, image in enumerate(batch):
            axes[r, c].imshow(((image.cpu().permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy(), interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(title, fontsize=9)
    figure.suptitle(f"inpainting, {case} case", fontsize=10)
    return save_figure(figure, path)
