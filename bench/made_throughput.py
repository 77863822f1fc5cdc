"""Batched k-ordering FARM+MADE vs the per-ordering loop, and both vs the machine's dense-matmul roofline.

For k in 1, 2, 4, 8 on a 784-1000-1000-784 MADE, batch 100, forward + backward:
  batched  one forward of all k orderings (stacked masks), one backward
  looped   one forward + backward per ordering (gradients accumulate)
  dense    an unmasked MLP of the same shapes on a batch of k*100 rows: the same matmul FLOPs with no
           masking overhead, i.e. the best this machine's matmuls can do for this work
Timed by the project's benchmark method (farm_sweep/timing.py): the three interleaved round-robin, a warm-up
round, two runs of 5 rounds, median [min-max]; a ratio is printed only when the two runs agree within 20%.
"batched / dense" is printed as dense time over batched time (the share of the roofline reached).

`--profile K` instead profiles 10 batched steps at k = K with torch.profiler and prints where the time goes, by
operator (self time), beside the dense MLP's 10 steps: what separates the batched step from the roofline.

    python bench/made_throughput.py [--threads 1] [--device cpu|cuda] [--profile 8]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from farm_sweep.losses import mc_loss
from farm_sweep.made.network import FarmMADE
from farm_sweep.orderings import make_orderings
from farm_sweep.timing import Measurement, Timing, describe, fixed_threads, measure

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


def steps_at(k: int, device: torch.device) -> dict[str, Callable[[], None]]:
    """The three steps compared at k orderings, on fixed random binary data."""
    torch.manual_seed(0)
    model = FarmMADE(make_orderings("raster", k, 28, 28), SIZES[1:-1]).to(device)
    layers = [torch.nn.Linear(a, b).to(device) for a, b in zip(SIZES, SIZES[1:])]
    x = torch.bernoulli(torch.full((BATCH, 784), 0.3, device=device))
    x_dense = x.repeat(k, 1)
    return {"batched": lambda: batched_step(model, x), "looped": lambda: looped_step(model, x),
            "dense": lambda: dense_step(layers, x_dense)}


def measure_k(k: int, device: torch.device, threads: int) -> Measurement:
    return measure(steps_at(k, device), threads=threads,
                   synchronize=torch.cuda.synchronize if device.type == "cuda" else None)


def profile(k: int, device: torch.device, threads: int, steps: int = 10) -> None:
    """Print the operators that take the batched and the dense step's time, by self time over `steps` steps."""
    settings = steps_at(k, device)
    with fixed_threads(threads):
        for name in ("batched", "dense"):
            settings[name]()  # warm-up
            with torch.profiler.profile() as profiler:
                for _ in range(steps):
                    settings[name]()
            events = profiler.key_averages()
            total = sum(event.self_cpu_time_total for event in events)
            print(f"\n{name} step, k = {k}, {steps} steps, {threads} thread(s): {total / 1e3 / steps:.1f} ms per step")
            for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
                print(f"  {event.key:<40} {event.self_cpu_time_total / 1e3 / steps:8.2f} ms/step "
                      f"({event.self_cpu_time_total / total:5.1%})  calls/step {event.count / steps:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, fixed while timing")
    parser.add_argument("--profile", type=int, metavar="K", help="profile the batched step at k = K instead")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.profile:
        profile(args.profile, device, args.threads)
        return
    print(f"device {device}, MADE {'-'.join(map(str, SIZES))}, batch {BATCH}, forward+backward")
    print(f"{'k':>2} {'batched ms':>22} {'looped ms':>22} {'dense ms':>22} {'loop/batched':>13} "
          f"{'batched GFLOP/s':>16} {'dense GFLOP/s':>14} {'batched/dense':>14}")
    for k in (1, 2, 4, 8):
        m = measure_k(k, device, args.threads)
        rate = {name: flops(k) / m.timing(name).median / 1e9 for name in ("batched", "dense")}
        shown = {name: milliseconds(m.timing(name)) for name in ("batched", "looped", "dense")}
        print(f"{k:>2} {shown['batched']:>22} {shown['looped']:>22} {shown['dense']:>22} "
              f"{published(m.ratio('looped', 'batched')):>13} {rate['batched']:>16.1f} {rate['dense']:>14.1f} "
              f"{published(m.ratio('dense', 'batched')):>14}")
    print(f"method: {describe(m)}")


def milliseconds(timing: Timing) -> str:
    return f"{timing.median * 1e3:.2f} [{timing.low * 1e3:.1f}-{timing.high * 1e3:.1f}]"


def published(ratio: float | None) -> str:
    return "runs disagree" if ratio is None else f"{ratio:.2f}"


if __name__ == "__main__":
    main()
