"""Sweep-system overhead per trial, measured side by side in one run (what pruning saves: bench/pruning.py).

N configurations (seeds 0..N-1, default N = 6) trained three ways, timed by the project's benchmark method
(farm_sweep/timing.py: interleaved, a warm-up round, two runs of 5 rounds, median [min-max]):
  train()      `farm_sweep.training.loop.train` called directly for each, one after another;
  study N      an N-trial study (Ray Tune + Optuna + MLflow + checkpoints, one trial at a time, Ray started once);
  study 2N     the same study with 2N trials (the seeds twice).
A study costs a fixed start and end (a new MLflow store, the first trial worker's imports) plus a cost per trial;
the difference between the 2N- and the N-trial study is N trials' worth, so

  per-trial overhead = (study 2N - study N) / N - train() / N      (what each further trial adds)
  study fixed cost   = study N - N x (train() / N + per-trial overhead)

are computed per run from its medians, and published when the two runs agree within 20% (absolute 0.1 s for the
per-trial figure, which can be near zero).

    FARM_DATA_DIR=... python bench/sweep_overhead.py [--study studies/quickstart.yaml] [--trials 6]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from farm_sweep.sweep.runner import run_study
from farm_sweep.sweep.search_space import Parameter, SearchSpace
from farm_sweep.sweep.study import Component, Study, load_study
from farm_sweep.timing import Measurement, describe, measure, runs_agree
from farm_sweep.training.config import TrainConfig
from farm_sweep.training.loop import train


def seed_study(fixed: dict[str, Any], trials: int, scratch: Path) -> Study:
    """A study of `trials` trials, one at a time, that differ only in their seed (enqueued: no sampling)."""
    seeds = tuple(range(trials))
    space = SearchSpace((Parameter("seed", "categorical", choices=seeds),), fixed)
    return Study(name="overhead", path=scratch / "overhead.yaml", search_space_path=None, space=space,
                 trials=trials, max_concurrent_trials=1, pruner=Component("none"), max_failures=0,
                 enqueue=tuple({"seed": seed} for seed in seeds))


def overhead(config: TrainConfig, trials: int, scratch: Path) -> Measurement:
    """train() itself (checkpointing every epoch, as trials do) for seeds 0..trials-1 against studies of
    `trials` and 2 x `trials` of the same configurations, each round in a fresh folder."""
    fixed = {k: v for k, v in config.to_dict().items() if k != "seed"}
    seeds = tuple(range(trials))
    rounds = itertools.count()

    def direct() -> None:
        folder = scratch / f"direct_{next(rounds)}"
        for seed in seeds:
            for _ in train(TrainConfig.from_dict({**fixed, "seed": seed}), folder / str(seed), progress=None):
                pass

    def system(study: Study) -> Callable[[], None]:
        return lambda: run_study(study, scratch / f"study_{next(rounds)}")

    return measure({"train()": direct, "study N": system(seed_study(fixed, trials, scratch)),
                    "study 2N": system(seed_study(fixed, 2 * trials, scratch))})


def per_trial_and_fixed(direct: float, once: float, twice: float, n: int) -> tuple[float, float]:
    """(per-trial overhead, study fixed cost) from the three medians (module docstring)."""
    per_trial = (twice - once) / n - direct / n
    return per_trial, once - n * (direct / n + per_trial)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=Path("studies/quickstart.yaml"))
    parser.add_argument("--trials", type=int, default=6, help="trials per timed study (and train() calls)")
    args = parser.parse_args()
    study = load_study(args.study)
    config = TrainConfig.from_dict({**study.space.fixed, **(study.enqueue[0] if study.enqueue else {})})
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        timed = overhead(config, args.trials, scratch)
    n = args.trials
    print(f"\n{n} trials of {config.epochs} epochs of {config.dataset} ({describe(timed)}):")
    for name in ("train()", "study N", "study 2N"):
        timing = timed.timing(name)
        print(f"  {name:<9} {timing.median:7.2f} s  [{timing.low:.2f}-{timing.high:.2f}]")
    split = [per_trial_and_fixed(run["train()"].median, run["study N"].median, run["study 2N"].median, n)
             for run in timed.runs]
    for label, index, absolute in (("per-trial overhead", 0, 0.1), ("study fixed cost", 1, 0.0)):
        values = [pair[index] for pair in split]
        print(f"  {label}: runs {', '.join(f'{v:+.2f}' for v in values)} s; "
              + (f"{sum(values) / len(values):+.2f} s" if runs_agree(values, absolute)
                 else "not published: the runs disagree"))


if __name__ == "__main__":
    main()
