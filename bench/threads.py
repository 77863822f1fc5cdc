"""One training run on 1 torch thread vs 2: how much a second core speeds up a training step.

Per network (the converging recipe's 784-4000-784 MADE k=1 and the paper's 784-1000-1000-784 FARM k=8, both
with direct connections, `mc` loss, batch 100, fused Adam): `--steps` training steps on 1 thread and on 2,
interleaved by the project's benchmark method (farm_sweep/timing.py; the thread count is switched inside each
setting). A speed-up well below 2 means that two trials of one thread each use 2 cores better than one trial of
two (bench/sweep_efficiency.py measures that at the study level).

    python bench/threads.py [--steps 10]
"""

from __future__ import annotations

import argparse

from optimizer_step import BATCH, step_function  # bench/, on the path as the script's folder

from farm_sweep.timing import describe, measure

NETWORKS = {"MADE k=1, 4000 (the recipe)": (1, (4000,)), "FARM k=8, 2 x 1000 (the paper's)": (8, (1000, 1000))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed call")
    args = parser.parse_args()
    settings = {f"{name}, {threads} thread(s)": step_function(k, "shared", True, args.steps, hidden, threads)
                for name, (k, hidden) in NETWORKS.items() for threads in (1, 2)}
    m = measure(settings)
    print(f"mc training steps, batch {BATCH}, ms per step:")
    for name in settings:
        timing = m.timing(name)
        print(f"  {name:<44} {timing.median / args.steps * 1e3:8.1f} "
              f"[{timing.low / args.steps * 1e3:.1f}-{timing.high / args.steps * 1e3:.1f}]")
    for name in NETWORKS:
        one, two = f"{name}, 1 thread(s)", f"{name}, 2 thread(s)"
        ratio = m.ratio(one, two)
        runs = ", ".join(f"{r:.2f}x" for r in m.run_ratios(one, two))
        print(f"  {name}: 2 threads are {'not published, the runs disagree' if ratio is None else f'{ratio:.2f}x'} "
              f"as fast as 1 (runs: {runs})")
    print(f"method: {describe(m).replace(f'{m.threads} torch thread(s); ', '')}")


if __name__ == "__main__":
    main()
