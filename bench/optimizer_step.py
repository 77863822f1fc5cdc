"""Benchmark: one `mc` training step of FARM+MADE k=8 with PyTorch's default Adam vs its fused Adam.

Under `mc` a step runs one ordering (forward + backward), then Adam updates every parameter. With `shared`
weights that is a 2 x 1000 MADE's 3.2M parameters; `shared_hidden` and `separate` keep a first and last layer
(or everything) per ordering, 14M and 25M parameters, all updated every step (the unused orderings' moments
decay). The unfused update makes a dozen passes over them; the fused one, one. A plain MADE k=1 with the same
optimizer is the reference the mc loss should match. Timed by the project's benchmark method (farm_sweep/timing.py):
the settings interleaved round-robin, a warm-up round, two runs of 5 rounds, median [min-max]; a ratio is
printed only when the two runs agree within 20%.

    python bench/optimizer_step.py [--threads 1] [--schemes shared separate] [--steps 5]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from farm_sweep.losses import mc_loss
from farm_sweep.made.network import WEIGHT_SHARING, FarmMADE
from farm_sweep.orderings import make_orderings
from farm_sweep.timing import describe, measure

HIDDEN = (1000, 1000)
BATCH = 100


def step_function(k: int, weight_sharing: str, fused: bool, steps: int, hidden: tuple[int, ...] = HIDDEN,
                  threads: int | None = None) -> Callable[[], None]:
    """`steps` mc steps (ordering t mod k at step t) of a fresh 784-`hidden`-784 MADE with direct connections,
    on `threads` torch threads (None: as they are)."""
    torch.manual_seed(0)
    model = FarmMADE(make_orderings("raster", k, 28, 28), hidden, weight_sharing, direct_connections=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    x = (torch.rand(BATCH, 784) < 0.3).float()

    def run() -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        for t in range(steps):
            optimizer.zero_grad(set_to_none=True)
            mc_loss(model(x, torch.tensor([t % k])), x).backward()
            optimizer.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, fixed while timing")
    parser.add_argument("--schemes", nargs="+", default=["shared", "shared_hidden", "separate"],
                        choices=WEIGHT_SHARING)
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed call")
    args = parser.parse_args()
    settings = {f"made_k1 {name}": step_function(1, "shared", fused, args.steps)
                for name, fused in (("default", False), ("fused", True))}
    for scheme in args.schemes:
        for fused in (False, True):
            settings[f"{scheme} {'fused' if fused else 'default'}"] = step_function(8, scheme, fused, args.steps)
    m = measure(settings, threads=args.threads)
    print(f"mc training step, 784-{'-'.join(map(str, HIDDEN))}-784 MADE with direct connections, batch {BATCH}, "
          f"k=8 (MADE k=1 for reference), ms per step:")
    for name in settings:
        timing = m.timing(name)
        print(f"  {name:26s} {timing.median / args.steps * 1e3:8.1f} "
              f"[{timing.low / args.steps * 1e3:.1f}-{timing.high / args.steps * 1e3:.1f}]")
    for scheme in args.schemes:
        for numerator, denominator in ((f"{scheme} default", f"{scheme} fused"),
                                       (f"{scheme} fused", "made_k1 fused")):
            ratio = m.ratio(numerator, denominator)
            runs = ", ".join(f"{r:.2f}x" for r in m.run_ratios(numerator, denominator))
            shown = "not published, the runs disagree" if ratio is None else f"{ratio:.2f}x"
            print(f"  {numerator} / {denominator}: {shown} (runs: {runs})")
    print(f"method: {describe(m)}")


if __name__ == "__main__":
    main()
