"""Sweep-system overhead and what pruning saves, measured side by side in one run.

1. Per-trial overhead: N configurations (seeds 0..N-1, default N = 6) trained by calling
   `farm_sweep.training.loop.train` directly one after another, and as an N-trial study (Ray Tune + Optuna +
   MLflow + checkpoints, one trial at a time, Ray started once), timed by the project's benchmark method
   (farm_sweep/timing.py: the two interleaved, a warm-up round, two runs of 5 rounds, median [min-max]; the
   ratio is published only when the two runs agree within 20%); the difference of the medians, divided by N,
   is the system's overhead per trial (the study's own start and end spread over its trials).
2. Pruning: one study (default studies/quickstart.yaml) run twice with the same seed, with its pruner and
   with `pruner: none`; trial-epochs spent and the best validation nll_image each reached (counts, not
   timings: repeating whole studies 11 times is out of a benchmark's budget).

    FARM_DATA_DIR=... python bench/sweep_overhead.py [--study studies/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import tempfile
from pathlib import Path

import ray

from farm_sweep.sweep.results_table import best_row
from farm_sweep.sweep.runner import run_study
from farm_sweep.sweep.search_space import Parameter, SearchSpace
from farm_sweep.sweep.study import Component, Study, load_study
from farm_sweep.timing import Measurement, describe, measure
from farm_sweep.training.config import TrainConfig
from farm_sweep.training.loop import train


def overhead(config: TrainConfig, trials: int, scratch: Path) -> Measurement:
    """train() itself (checkpointing every epoch, as trials do) for seeds 0..trials-1 against a study of the
    same configurations, each round in a fresh folder."""
    fixed = {k: v for k, v in config.to_dict().items() if k != "seed"}
    seeds = tuple(range(trials))
    space = SearchSpace((Parameter("seed", "categorical", choices=seeds),), fixed)
    study = Study(name="overhead", path=scratch / "overhead.yaml", search_space_path=None, space=space,
                  trials=trials, max_concurrent_trials=1, pruner=Component("none"), max_failures=0,
                  enqueue=tuple({"seed": seed} for seed in seeds))
    rounds = itertools.count()

    def direct() -> None:
        folder = scratch / f"direct_{next(rounds)}"
        for seed in seeds:
            for _ in train(TrainConfig.from_dict({**fixed, "seed": seed}), folder / str(seed), progress=None):
                pass

    def system() -> None:
        run_study(study, scratch / f"study_{next(rounds)}")

    return measure({"train()": direct, "study trial": system})


def pruning_comparison(study: Study, scratch: Path) -> dict[str, tuple[int, float]]:
    """Per variant: (trial-epochs spent, best completed validation nll_image)."""
    outcomes = {}
    for label, variant in (("with pruning", study), ("without", dataclasses.replace(study, pruner=Component("none")))):
        rows = run_study(variant, scratch / label.replace(" ", "_"))
        best = best_row(rows)
        outcomes[label] = (sum(int(row["epochs"]) for row in rows), float(best["nll_image"]) if best else float("nan"))
    return outcomes


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
        pruning = pruning_comparison(study, scratch)
    direct, system = timed.timing("train()"), timed.timing("study trial")
    ratio = timed.ratio("study trial", "train()")
    n = args.trials
    print(f"\nper-trial overhead ({n} trials of {config.epochs} epochs of {config.dataset}; {describe(timed)}):")
    print(f"  train() directly   {direct.median / n:7.2f} s/trial  [{direct.low / n:.2f}-{direct.high / n:.2f}]")
    print(f"  as study trials    {system.median / n:7.2f} s/trial  [{system.low / n:.2f}-{system.high / n:.2f}]  "
          f"(overhead {(system.median - direct.median) / n:+.2f} s per trial, "
          f"{'ratio not published: the runs disagree' if ratio is None else f'x{ratio:.2f}'})")
    print(f"\npruning on {study.name} ({study.trials} trials, seed {study.seed}, pruner {study.pruner.type}):")
    for label, (epochs, best) in pruning.items():
        print(f"  {label:<13} {epochs:4d} trial-epochs  best nll_image {best:8.3f}")
    (with_epochs, _), (without_epochs, _) = pruning.values()
    print(f"  pruning spent {with_epochs / without_epochs:.0%} of the trial-epochs")


if __name__ == "__main__":
    main()
