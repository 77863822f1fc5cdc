"""Batched k-ordering FARM+MADE vs the per-ordering loop, and both vs the machine's dense-matmul roofline.

For k in 1, 2, 4, 8 on a 784-1000-1000-784 MADE, batch 100, forward + backward:
  batched  one forward of all k orderings (stacked masks), one backward
  looped   one forward + backward per ordering (gradients accumulate)
  dense    an unmasked MLP of the same shapes on a batch of k*100 rows: the same matmul FLOPs with no
           masking overhead, i.e. the best this machine's matmuls can do for this work
Measurements alternate between the three within each repetition so that machine noise hits all alike.

    python bench/made_throughput.py [--repeats 10] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from farm_sweep.losses import mc_loss
from farm_sweep.made.network import FarmMADE
from farm_sweep.orderings import make_orderings

SIZES = (784, 1000, 1000, 784)
BATCH = 100


def flops(k: int) -> float:
    """Matmul FLOPs of forward + backward (backward = 2x forward) for k orderings."""
    forward = 2 * BATCH * sum(a * b for a, b in zip(SIZES, SIZES[1:]))
    return 3 * forward * k


def batched_step(model: FarmMADE, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    mc_loss(model(x), x).backward()


def looped_step(model: FarmMADE, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    for i in range(model.k):
        (mc_loss(model(x, orderings=torch.tensor([i])), x) / model.k).backward()


def dense_step(layers: list[torch.nn.Linear], x: torch.Tensor) -> None:
    for layer in layers:
        layer.zero_grad(set_to_none=True)
    h = x
    for n, layer in enumerate(layers):
        h = layer(h)
        h = torch.relu(h) if n < len(layers) - 1 else h
    F.binary_cross_entropy_with_logits(h, x).backward()


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - began


def measure(k: int, repeats: int, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    model = FarmMADE(make_orderings("raster", k, 28, 28), SIZES[1:-1]).to(device)
    layers = [torch.nn.Linear(a, b).to(device) for a, b in zip(SIZES, SIZES[1:])]
    x = torch.bernoulli(torch.full((BATCH, 784), 0.3, device=device))
    x_dense = x.repeat(k, 1)
    steps = {"batched": lambda: batched_step(model, x), "looped": lambda: looped_step(model, x),
             "dense": lambda: dense_step(layers, x_dense)}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for repeat in range(repeats + 2):
        for name, step in steps.items():
            seconds = timed(step, device)
            if repeat >= 2:  # the first two are warm-up
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, MADE {'-'.join(map(str, SIZES))}, "
          f"batch {BATCH}, forward+backward, median of {args.repeats}")
    print(f"{'k':>2} {'batched ms':>11} {'looped ms':>10} {'dense ms':>9} {'loop/batched':>13} "
          f"{'batched GFLOP/s':>16} {'dense GFLOP/s':>14} {'batched/dense':>14}")
    for k in (1, 2, 4, 8):
        t = measure(k, args.repeats, device)
        rate = {name: flops(k) / seconds / 1e9 for name, seconds in t.items()}
        print(f"{k:>2} {t['batched'] * 1e3:>11.2f} {t['looped'] * 1e3:>10.2f} {t['dense'] * 1e3:>9.2f} "
              f"{t['looped'] / t['batched']:>13.2f} {rate['batched']:>16.1f} {rate['dense']:>14.1f} "
              f"{rate['batched'] / rate['dense']:>14.2f}")


if __name__ == "__main__":
    main()
