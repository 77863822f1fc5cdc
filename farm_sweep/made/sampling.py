"""Fast sampling from a FARM+MADE (paper 3.5, DESIGN 5) and the speed-quality curve.

Every sampler draws pixel d as x_d = 1[u_d < p_d], i.e. 1[logit(u_d) < logit_d], from frozen uniform
noise u (N, D) indexed by pixel, with the model's active hidden-mask set. Knobs:
- `sequential`: ordering 0, one pixel per network evaluation: D evaluations (no knob).
- `multi_order`: knob j = how many orderings (the first j) sample together: in every step each fills
  its next unfilled pixel (paper 3.5; when two pick the same pixel the lower-indexed ordering fills
  it), one batched forward of the j orderings per step: about D/j steps, each counted as j network
  evaluations (what it computes), so about D evaluations in all: its gain is fewer, larger forwards, not
  less compute. j = 1 is `sequential`.
- `fixed_point`: Jacobi iteration x <- f(x) of the ordering-0 rule, all pixels at once, one
  evaluation per iteration, until nothing changes; knob = the most iterations. After t iterations the
  first t pixels of ordering 0 are final, so D iterations always reach the sequential sample with the
  same noise, bit for bit; stopped earlier it gives an approximate sample (the speed-quality knob).
"""

from __future__ import annotations

import time
from typing import Any

import matplotlib
import torch

from farm_sweep.inference import inference
from farm_sweep.made.network import FarmMADE
from farm_sweep.speed_quality import CURVE_FIELDS, Scorer

matplotlib.use("Agg")

SAMPLERS = ("sequential", "multi_order", "fixed_point")


@inference
def sample(model: FarmMADE, sampler: str, num_samples: int, knob: int | None = None, *,
           generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """(samples (N, D) in {0,1}, network evaluations). Noise: `noise` (N, D) uniform, or drawn from
    `generator`. Knob: orderings for multi_order (default all k), most iterations for fixed_point
    (default D: exact)."""
    device = model.orders.device
    if noise is None:
        noise = torch.rand(num_samples, model.dim, generator=generator)
    threshold = torch.logit(noise.to(device, torch.float32))
    if sampler == "sequential":
        return _multi_order(model, threshold, 1)
    if sampler == "multi_order":
        return _multi_order(model, threshold, _in_range("orderings", knob or model.k, model.k))
    if sampler == "fixed_point":
        return _fixed_point(model, threshold, _in_range("iterations", knob or model.dim, model.dim))
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def _multi_order(model: FarmMADE, threshold: torch.Tensor, count: int) -> tuple[torch.Tensor, int]:
    orders = model.orders[:count]
    x = torch.zeros_like(threshold)
    filled = torch.zeros(model.dim, dtype=torch.bool, device=x.device)
    evaluations = 0
    while not filled.all():
        firsts = orders.gather(1, (~filled[orders]).int().argmax(1, keepdim=True)).squeeze(1)
        claims: dict[int, int] = {}
        for ordering, pixel in enumerate(firsts.tolist()):
            claims.setdefault(pixel, ordering)
        pixels, orderings = (torch.tensor(list(v), device=x.device) for v in (claims.keys(), claims.values()))
        logits = model(x, torch.arange(count, device=x.device))[orderings, :, pixels]  # (n, N)
        x[:, pixels] = (threshold[:, pixels] < logits.T).to(x.dtype)
        filled[pixels] = True
        evaluations += count  # one forward of `count` orderings costs `count` single-ordering evaluations
    return x, evaluations


def _fixed_point(model: FarmMADE, threshold: torch.Tensor, max_iterations: int) -> tuple[torch.Tensor, int]:
    first = torch.zeros(1, dtype=torch.long, device=threshold.device)
    x = torch.zeros_like(threshold)
    evaluations = 0
    while evaluations < max_iterations:
        update = (threshold < model(x, first)[0]).to(x.dtype)
        evaluations += 1
        if torch.equal(update, x):
            break
        x = update
    return x, evaluations


def _in_range(what: str, knob: int, high: int) -> int:
    if not 1 <= knob <= high:
        raise ValueError(f"knob: {knob} {what} is out of range 1..{high}")
    return knob


def curve_settings(k: int, dim: int) -> list[tuple[str, int]]:
    """(sampler, knob) pairs of the curve: sequential, multi_order with 2, 4, ... up to k orderings, and
    fixed_point capped at D/16, D/8, D/4, D/2 and D iterations."""
    orderings = sorted({min(2 ** e, k) for e in range(1, k.bit_length() + 1)} - {1})
    iterations = sorted({dim // 2 ** e for e in range(5)} - {0})
    return ([("sequential", 1)] + [("multi_order", j) for j in orderings]
            + [("fixed_point", m) for m in iterations])


def speed_quality_curve(model: FarmMADE, height: int, width: int, scorer: Scorer, num_samples: int,
                        seed: int, repeats: int = 3) -> list[dict[str, Any]]:
    """One row per sampler setting, all with the same batch and noise in this run: network evaluations,
    wall seconds (best of `repeats`), speed-up over `sequential` (wall clock, and in evaluations) and
    sample quality."""
    if height * width != model.dim:
        raise ValueError(f"a {height}x{width} image has {height * width} pixels; the model has {model.dim}")
    noise = torch.rand(num_samples, model.dim, generator=torch.Generator().manual_seed(seed))
    model(torch.zeros(num_samples, model.dim, device=model.orders.device))  # warm-up before timing
    rows = []
    for sampler, knob in curve_settings(model.k, model.dim):
        walls = []
        for _ in range(repeats):  # the same samples every time: the fastest run is the least disturbed
            began = time.perf_counter()
            samples, evaluations = sample(model, sampler, num_samples, knob, noise=noise)
            walls.append(time.perf_counter() - began)
        wall = min(walls)
        rows.append({"sampler": sampler, "knob": knob, "network_evaluations": evaluations, "wall_seconds": wall,
                     "classifier_score": scorer.classifier_score(samples),
                     "frechet_distance": scorer.frechet_distance(samples)})
    for row in rows:
        row["speedup"] = rows[0]["wall_seconds"] / row["wall_seconds"]
        row["evaluation_speedup"] = rows[0]["network_evaluations"] / row["network_evaluations"]
    return [{field: row[field] for field in CURVE_FIELDS} for row in rows]
