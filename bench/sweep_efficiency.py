"""Sweep efficiency: how much of the machine a study of about 1-minute trials spends training, and how a trial
should use the cores: 2 trials x 1 torch thread against 1 trial x 2 threads, on the same study.

    efficiency = sum over trials of (train_seconds x the trial's torch threads) / (cores x study wall seconds)

`train_seconds` is the trial's own time in training and validation epochs (trials.parquet); everything else in
the wall time (starting workers, Optuna, MLflow, checkpoints, waiting) is the system's. A trial runs torch on as
many threads as the CPUs it was granted (`resources.cpus`, farm_sweep.sweep.trial.use_granted_cpus).

The two settings are run interleaved, A B A B, in `--runs` runs of `--rounds` rounds (default 2 x 2: a round is
a whole study of several minutes, so fewer rounds than farm_sweep/timing.py's 5), each study in a fresh folder,
on one Ray started once with `--cores` CPUs; the ratio of the wall times is published only when the runs agree
within 20%.

    FARM_DATA_DIR=... python bench/sweep_efficiency.py [--trials 4] [--config '{"epochs": 3}']
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import yaml

from farm_sweep.sweep import tables
from farm_sweep.sweep.runner import run_study
from farm_sweep.sweep.study import load_study
from farm_sweep.timing import runs_agree

# About a minute per trial on one thread of this project's 2-core machine: k = 2 FARM+MADE on the 50,000
# binarized-MNIST training images for 7 epochs, validated on the 10,000 validation images every epoch.
TRIAL = {"dataset": "binarized_mnist", "model": "made", "hidden_sizes": [500], "num_orderings": 2, "loss": "mc",
         "epochs": 7, "batch_size": 100}
SETTINGS = {"2 trials x 1 thread": {"max_concurrent_trials": 2, "resources": {"cpus": 1}},
            "1 trial x 2 threads": {"max_concurrent_trials": 1, "resources": {"cpus": 2}}}


def study_file(folder: Path, name: str, setting: dict[str, Any], fixed: dict[str, Any], trials: int) -> Path:
    """A study of `trials` trials that differ only in their seed, without pruning or evaluation."""
    document = {"name": name, "trials": trials, "pruner": "none", "sampler": "grid", "fixed": fixed, **setting,
                "search_space": {"parameters": {"seed": {"distribution": "categorical",
                                                         "choices": list(range(trials))}}}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def run_once(path: Path, output: Path, threads: int, cores: int) -> dict[str, float]:
    """Run the study; its wall seconds and efficiency."""
    began = time.perf_counter()
    run_study(load_study(path), output)
    wall = time.perf_counter() - began
    trials = tables.read(output / tables.FOLDER / "trials.parquet").to_pylist()
    if any(trial["status"] != "completed" for trial in trials):
        raise RuntimeError(f"{path}: a trial did not complete: {[t['status'] for t in trials]}")
    training = sum(trial["train_seconds"] for trial in trials) * threads
    return {"wall": wall, "efficiency": training / (cores * wall),
            "trial_seconds": statistics.median(trial["train_seconds"] for trial in trials)}


def spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4, help="trials per study")
    parser.add_argument("--cores", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--config", type=json.loads, default={}, help="JSON over the trial's configuration")
    args = parser.parse_args()
    fixed = {**TRIAL, **args.config}
    ray.init(num_cpus=args.cores, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    results: dict[str, list[list[dict[str, float]]]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for run in range(args.runs):
            for name in SETTINGS:
                results[name].append([])
            for round_ in range(args.rounds):
                for index, (name, setting) in enumerate(SETTINGS.items()):
                    label = f"s{index}_r{run}_{round_}"
                    path = study_file(folder, label, setting, fixed, args.trials)
                    outcome = run_once(path, folder / label, int(setting["resources"]["cpus"]), args.cores)
                    results[name][run].append(outcome)
                    print(f"run {run + 1} round {round_ + 1} {name}: wall {outcome['wall']:.1f} s, "
                          f"efficiency {outcome['efficiency']:.2f}", flush=True)
    report(results, fixed, args)


def report(results: dict[str, list[list[dict[str, float]]]], fixed: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\n{args.trials} trials per study, {args.cores} cores, {args.runs} runs x {args.rounds} rounds "
          f"interleaved; trial: {json.dumps(fixed)}")
    print(f"{'setting':<22} {'study wall s':>24} {'efficiency':>20} {'trial train s':>24}")
    for name, runs in results.items():
        rounds = [outcome for run in runs for outcome in run]
        print(f"{name:<22} {spread([o['wall'] for o in rounds], 1):>24} {spread([o['efficiency'] for o in rounds]):>20}"
              f" {spread([o['trial_seconds'] for o in rounds], 1):>24}")
    first, second = SETTINGS
    ratios = [statistics.median(o["wall"] for o in results[second][run])
              / statistics.median(o["wall"] for o in results[first][run]) for run in range(args.runs)]
    print(f"wall({second}) / wall({first}): runs {', '.join(f'{r:.2f}' for r in ratios)}; "
          + (f"{statistics.median(ratios):.2f}" if runs_agree(ratios) else "not published: the runs disagree"))


if __name__ == "__main__":
    main()
