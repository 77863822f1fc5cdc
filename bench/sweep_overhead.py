"""Sweep-system overhead and what pruning saves, measured side by side in one run.

1. Per-trial overhead: the same configuration trained N times by calling `farm_sweep.training.loop.train` directly,
   then as an N-trial study (Ray Tune + Optuna + MLflow + checkpoints, one trial at a time); the difference
   per trial is the system's overhead.
2. Pruning: one study (default studies/quickstart.yaml) run twice with the same seed, with its pruner and
   with `pruner: none`; trial-epochs spent and the best validation nll_image each reached.

    FARM_DATA_DIR=... python bench/sweep_overhead.py [--study studies/quickstart.yaml] [--repeats 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import ray

from farm_sweep.sweep.results_table import best_row
from farm_sweep.sweep.runner import run_study
from farm_sweep.sweep.search_space import Parameter, SearchSpace
from farm_sweep.sweep.study import Component, Study, load_study
from farm_sweep.training.config import TrainConfig
from farm_sweep.training.loop import train


def direct_seconds(config: TrainConfig, repeats: int, scratch: Path) -> float:
    """Wall seconds per run of train() itself, checkpointing every epoch as trials do."""
    began = time.perf_counter()
    for index in range(repeats):
        for _ in train(config, scratch / f"direct_{index}", progress=None):
            pass
    return (time.perf_counter() - began) / repeats


def system_seconds(config: TrainConfig, repeats: int, scratch: Path) -> float:
    """Wall seconds per trial of a study that trains the same configuration `repeats` times."""
    fixed = {k: v for k, v in config.to_dict().items() if k != "seed"}
    space = SearchSpace((Parameter("seed", "categorical", choices=(config.seed,)),), fixed)
    study = Study(name="overhead", path=scratch / "overhead.yaml", search_space_path=None, space=space,
                  trials=repeats, max_concurrent_trials=1, pruner=Component("none"), max_failures=0)
    began = time.perf_counter()
    run_study(study, scratch / "overhead")
    return (time.perf_counter() - began) / repeats


def pruning_comparison(study: Study, scratch: Path) -> dict[str, tuple[int, float, float]]:
    """Per variant: (trial-epochs spent, best completed validation nll_image, wall seconds)."""
    outcomes = {}
    for label, variant in (("with pruning", study), ("without", dataclasses.replace(study, pruner=Component("none")))):
        began = time.perf_counter()
        rows = run_study(variant, scratch / label.replace(" ", "_"))
        best = best_row(rows)
        outcomes[label] = (sum(int(row["epochs"]) for row in rows), float(best["nll_image"]) if best else float("nan"),
                           time.perf_counter() - began)
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=Path("studies/quickstart.yaml"))
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    study = load_study(args.study)
    config = TrainConfig.from_dict({**study.space.fixed, **(study.enqueue[0] if study.enqueue else {})})
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        direct = direct_seconds(config, args.repeats, scratch)
        system = system_seconds(config, args.repeats, scratch)
        pruning = pruning_comparison(study, scratch)
    print(f"\nper-trial overhead ({args.repeats} trials of {config.epochs} epochs, {config.dataset}):")
    print(f"  train() directly   {direct:7.2f} s/trial")
    print(f"  as a study trial   {system:7.2f} s/trial  (overhead {system - direct:+.2f} s, x{system / direct:.2f})")
    print(f"\npruning on {study.name} ({study.trials} trials, seed {study.seed}, pruner {study.pruner.type}):")
    for label, (epochs, best, seconds) in pruning.items():
        print(f"  {label:<13} {epochs:4d} trial-epochs  best nll_image {best:8.3f}  wall {seconds:6.0f} s")
    (with_epochs, *_), (without_epochs, *_) = pruning.values()
    print(f"  pruning spent {with_epochs / without_epochs:.0%} of the trial-epochs")


if __name__ == "__main__":
    main()
