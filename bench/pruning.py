"""What pruning saves: one study run without pruning and with each of Optuna's pruners, same sampler and seed.

Per variant: the trial-epochs spent, the study's wall time, the best completed validation nll_image, and each as a
fraction of the unpruned run's. A pruner pays (issue target) when its best is within 1% of the unpruned best on
at most 40% of the trial-epochs and 50% of the wall time. The variants run one after another (a whole study each,
minutes; counts, not timings, are the main result: repeating studies 11 times is out of a benchmark's budget),
on one Ray started once with `--cores` CPUs.

    FARM_DATA_DIR=... python bench/pruning.py [--study studies/cpu/pruning.yaml] [--pruners none median hyperband]
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
from farm_sweep.sweep.study import Component, Study, load_study

# Optuna's pruners with the options this comparison uses (successive halving twice: keeping a third or a quarter
# of the trials at each rung); steps are epochs.
PRUNERS = {"none": Component("none"),
           "median": Component("median", {"n_startup_trials": 4, "n_warmup_steps": 2}),
           "successive_halving": Component("successive_halving", {"min_resource": 1, "reduction_factor": 3}),
           "successive_halving_4": Component("successive_halving", {"min_resource": 1, "reduction_factor": 4}),
           "hyperband": Component("hyperband", {"min_resource": 1, "reduction_factor": 3})}


def run_variant(study: Study, pruner: Component, folder: Path) -> dict[str, float]:
    """Trial-epochs, wall seconds, best validation nll_image and how the trials ended, for `study` with `pruner`."""
    began = time.perf_counter()
    rows = run_study(dataclasses.replace(study, pruner=pruner), folder)
    wall = time.perf_counter() - began
    best = best_row(rows)
    statuses = [row["status"] for row in rows]
    return {"trial_epochs": sum(int(row["epochs"]) for row in rows), "wall": wall,
            "best": float(best["nll_image"]) if best else float("nan"),
            "completed": statuses.count("completed"), "pruned": statuses.count("pruned")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, default=Path("studies/cpu/pruning.yaml"))
    parser.add_argument("--pruners", nargs="+", choices=sorted(PRUNERS), default=list(PRUNERS))
    parser.add_argument("--cores", type=int, default=2, help="CPUs of the local Ray")
    args = parser.parse_args()
    study = load_study(args.study)
    ray.init(num_cpus=args.cores, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    outcomes = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in ["none", *(p for p in args.pruners if p != "none")]:
            outcomes[name] = run_variant(study, PRUNERS[name], Path(scratch) / name)
            print(f"{name}: {outcomes[name]}", flush=True)
    base = outcomes["none"]
    print(f"\n{study.name}: {study.trials} trials x up to {study.epochs} epochs, sampler {study.sampler.type} "
          f"seed {study.seed}, {study.max_concurrent_trials} at once, {args.cores} cores")
    print(f"{'pruner':<20} {'completed/pruned':>16} {'trial-epochs':>16} {'wall s':>14} {'best nll_image':>22}")
    for name, o in outcomes.items():
        print(f"{name:<20} {o['completed']:>7.0f}/{o['pruned']:<8.0f} "
              f"{o['trial_epochs']:>6.0f} ({o['trial_epochs'] / base['trial_epochs']:4.0%}) "
              f"{o['wall']:>6.0f} ({o['wall'] / base['wall']:4.0%}) "
              f"{o['best']:>9.3f} ({o['best'] / base['best'] - 1:+.2%})  {PRUNERS[name].options}")


if __name__ == "__main__":
    main()
