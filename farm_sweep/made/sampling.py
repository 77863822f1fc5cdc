"""Fast sampling from a FARM+MADE (paper 3.5, DESIGN 5) and the speed-quality curve.

Every sampler draws pixel d as x_d = 1[u_d < p_d], i.e. 1[logit(u_d) < logit_d], from frozen uniform
noise u (N, D) indexed by pixel. A model with several hidden-mask sets is the uniform mixture of its mask
sets (docs/models.md): each image draws its mask set, then is sampled under it. Knobs:
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
  Two phases. The fast phase iterates only the images still changing (an image that maps to itself is
  the sequential sample and stops), computes only the pixels not yet final, runs the hidden layers along
  the masks' staircase (farm_sweep.made.staircase), and keeps the first layer's pre-activations (and the
  direct connections' sums), adding the rows of the pixels that changed (x W^T updated by delta W^T over
  the changed pixels, not recomputed). Its sums are rounded in another order than the network's own
  forward, so the check follows: plain iterations of the network's forward on every image until one
  leaves them all unchanged (usually just one), which makes the result the sequential sample bit for bit.
  Every iteration of either phase counts as one network evaluation, though a fast one costs less (wall
  time shows how much).
- `cached_sequential`: the sequential sample again, drawn pixel by pixel with every hidden unit computed
  once, when the pixels it reads are drawn (farm_sweep.made.cached_sequential): D small steps that together
  multiply each unmasked weight once per image, at most one forward's work, counted as one evaluation; then
  the fixed point's check, which makes it sequential's sample bit for bit (no knob).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from farm_sweep.inference import inference
from farm_sweep.made.cached_sequential import cached_sequential_pass
from farm_sweep.made.network import FarmMADE
from farm_sweep.made.staircase import blocked, ordering_staircase
from farm_sweep.speed_quality import Scorer, speed_quality_rows
from farm_sweep.timing import MIN_ROUNDS

SAMPLERS = ("sequential", "multi_order", "fixed_point", "cached_sequential")


@inference
def sample(model: FarmMADE, sampler: str, num_samples: int, knob: int | None = None, *,
           generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
           masks: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """(samples (N, D) in {0,1}, network evaluations). Noise: `noise` (N, D) uniform, or drawn from
    `generator`. Mask sets: `masks` (N,) one per image, or drawn uniformly from `generator` when the model
    has several (each image is a sample of the mixture over mask sets). Knob: orderings for multi_order
    (default all k), most iterations for fixed_point (default D: exact)."""
    device = model.orders.device
    if noise is None:
        noise = torch.rand(num_samples, model.dim, generator=generator)
    if masks is None:
        masks = draw_masks(model, num_samples, generator)
    threshold = torch.logit(noise.to(device, model.weights[0].dtype))
    run = _sampler(model, sampler, knob)
    x, evaluations = torch.zeros_like(threshold), 0
    for mask in masks.unique().tolist():  # the images of one mask set sample together
        rows = (masks == mask).to(device)
        with model.using_mask(mask):
            x[rows], count = run(model, threshold[rows])
        evaluations = max(evaluations, count)
    return x, evaluations


def draw_masks(model: FarmMADE, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A mask set per image (N,), uniform over the model's mask sets (all 0 with one, drawing nothing)."""
    if model.num_masks == 1:
        return torch.zeros(num_samples, dtype=torch.long)
    return torch.randint(model.num_masks, (num_samples,), generator=generator)


def _sampler(model: FarmMADE, sampler: str, knob: int | None) -> Callable[[FarmMADE, torch.Tensor],
                                                                        tuple[torch.Tensor, int]]:
    """The sampler as a function of (model, threshold), its knob checked."""
    if sampler == "sequential":
        return functools.partial(_multi_order, count=1)
    if sampler == "multi_order":
        return functools.partial(_multi_order, count=_in_range("orderings", knob or model.k, model.k))
    if sampler == "fixed_point":
        return functools.partial(_fixed_point, max_iterations=_in_range("iterations", knob or model.dim, model.dim))
    if sampler == "cached_sequential":
        return _cached_sequential
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
    """Jacobi iteration of the ordering-0 rule: the fast phase, then the check (module docstring)."""
    x, evaluations = _incremental_fixed_point(model, threshold, max_iterations)
    return _check(model, threshold, x, evaluations, max_iterations)


def _cached_sequential(model: FarmMADE, threshold: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The cached pass (one evaluation's work), then the check; from any start the check settles within D."""
    return _check(model, threshold, cached_sequential_pass(model, threshold), 1, 1 + model.dim)


def _check(model: FarmMADE, threshold: torch.Tensor, x: torch.Tensor, evaluations: int,
           max_iterations: int) -> tuple[torch.Tensor, int]:
    """Plain iterations of the network's ordering-0 rule on every image, until one changes nothing (then x
    is the sequential sample bit for bit) or the evaluations reach `max_iterations`."""
    first = torch.zeros(1, dtype=torch.long, device=threshold.device)
    while evaluations < max_iterations:  # the network itself, on every image: a fixed point of it is exact
        update = (threshold < model(x, first)[0]).to(x.dtype)
        evaluations += 1
        if torch.equal(update, x):
            break
        x = update
    return x, evaluations


def _incremental_fixed_point(model: FarmMADE, threshold: torch.Tensor,
                             max_iterations: int) -> tuple[torch.Tensor, int]:
    """The fast phase: iterate only the images still changing, only their pixels not yet final (rank >= the
    iteration), on the ordering's sorted network (farm_sweep.made.staircase: hidden layers in row blocks
    along the masks' staircase), with the first layer's pre-activations (and the direct connections' sums)
    kept and updated by the pixels that changed. Works in rank order: after t iterations the first t
    columns are final. Returns when no image changes or after `max_iterations`."""
    net = ordering_staircase(model, 0)
    order, (first, *hidden) = net.order, net.layers
    threshold = threshold[:, order]
    x = torch.zeros_like(threshold)
    preactivation = first.bias.expand(len(x), -1).clone()  # x = 0
    first_columns = first.weight.T.contiguous()  # (D, h1): a changed pixel's row
    output, output_bias = net.output[order], net.output_bias[order, None]  # rows in rank order
    direct = net.direct[order][:, order].T.contiguous() if net.direct is not None else None
    direct_sums = torch.zeros_like(x) if direct is not None else None
    active = torch.arange(len(x), device=x.device)  # the images still changing
    evaluations = 0
    while len(active) and evaluations < max_iterations:
        pending = evaluations
        h = preactivation[active].T.relu()
        for layer in hidden:
            h = blocked(layer.weight, h, layer.support, [1], len(active)).add_(layer.bias[:, None]).relu_()
        logits = torch.addmm(output_bias[pending:], output[pending:], h).T
        if direct_sums is not None:
            logits += direct_sums[active, pending:]
        delta = (threshold[active, pending:] < logits).to(x.dtype) - x[active, pending:]
        evaluations += 1
        moved = delta.any(1)
        active, delta = active[moved], delta[moved]
        columns = delta.any(0).nonzero()[:, 0]
        delta = delta[:, columns]
        columns += pending
        x[active[:, None], columns] += delta
        preactivation[active] += delta @ first_columns[columns]
        if direct_sums is not None:
            direct_sums[active] += delta @ direct[columns]
    samples = torch.empty_like(x)
    samples[:, order] = x
    return samples, evaluations


def _in_range(what: str, knob: int, high: int) -> int:
    if not 1 <= knob <= high:
        raise ValueError(f"knob: {knob} {what} is out of range 1..{high}")
    return knob


def curve_settings(k: int, dim: int) -> list[tuple[str, int]]:
    """(sampler, knob) pairs of the curve: sequential, multi_order with 2, 4, ... up to k orderings,
    fixed_point capped at D/100 (100x fewer evaluations than sequential), D/64, D/32, D/16, D/4 and D
    iterations (D: exact), and cached_sequential."""
    orderings = sorted({min(2 ** e, k) for e in range(1, k.bit_length() + 1)} - {1})
    iterations = sorted({dim // share for share in (100, 64, 32, 16, 4, 1)} - {0})
    return ([("sequential", 1)] + [("multi_order", j) for j in orderings]
            + [("fixed_point", m) for m in iterations] + [("cached_sequential", 1)])


def speed_quality_curve(model: FarmMADE, height: int, width: int, scorer: Scorer, num_samples: int,
                        seed: int, settings: list[tuple[str, int]] | None = None, rounds: int = MIN_ROUNDS,
                        timed_samples: int | None = None) -> list[dict[str, Any]]:
    """farm_sweep.speed_quality's rows for `settings` (default `curve_settings`), every setting with the same
    noise and mask sets: quality of `num_samples` samples, wall time of the first `timed_samples` (default:
    all) by the project's benchmark method (farm_sweep.timing, `rounds` per run); ratios are to the first
    setting."""
    if height * width != model.dim:
        raise ValueError(f"a {height}x{width} image has {height * width} pixels; the model has {model.dim}")
    generator = torch.Generator().manual_seed(seed)
    noise, masks = torch.rand(num_samples, model.dim, generator=generator), draw_masks(model, num_samples, generator)

    def draw(sampler: str, knob: int, batch: int) -> tuple[torch.Tensor, int]:
        return sample(model, sampler, batch, knob, noise=noise[:batch], masks=masks[:batch])

    synchronize = torch.cuda.synchronize if model.orders.is_cuda else None
    return speed_quality_rows(settings or curve_settings(model.k, model.dim), draw, scorer, num_samples,
                              timed_samples or num_samples, synchronize, rounds)
