"""Benchmark: every sampler of the speed-quality curve against `sequential` (same batch, same noise, same
run) with its sample quality, for a trained checkpoint or a quickly trained model. Timed by the project's
benchmark method (farm_sweep/timing.py, through the curve itself): settings interleaved round-robin, a
warm-up round, two runs of 5 rounds, median [min-max]; a speed-up is published only when the two runs
agree within 20%.

    FARM_DATA_DIR=../shared/data python bench/sampling.py                  # a quickly trained model
    python bench/sampling.py --checkpoint runs/trial/checkpoints --num-samples 100 --threads 1
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from inpaint_eval import add_model_arguments, trained_model  # noqa: E402

from farm_sweep.evaluation.scorers import quality_scorer  # noqa: E402
from farm_sweep.made.sampling import sample, speed_quality_curve  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, fixed while timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, test = trained_model(args)
    scorer = quality_scorer(test.name, cache_dir=None)
    noise = torch.rand(args.num_samples, model.dim, generator=torch.Generator().manual_seed(args.seed))
    exact = torch.equal(sample(model, "sequential", args.num_samples, noise=noise)[0],
                        sample(model, "fixed_point", args.num_samples, noise=noise)[0])
    rows = speed_quality_curve(model, test.height, test.width, scorer, args.num_samples, args.seed)
    print(f"{test.name}, k={model.k}, hidden {model.hidden_sizes}, {next(model.parameters()).device}, "
          f"{args.num_samples} samples, {rows[0]['threads']} torch thread(s); fixed_point == sequential bit for "
          f"bit: {exact}")
    print(f"real test images: classifier_score {scorer.classifier_score(test.images):.3f}")
    print(f"{'sampler':12s} {'knob':>5s} {'evals':>6s} {'seconds median [min-max]':>26s} {'speed-up':>8s} "
          f"{'evals x':>8s} {'score':>6s} {'frechet':>8s}")
    for row in rows:
        wall = f"{row['wall_seconds']:.3f} [{row['wall_seconds_min']:.3f}-{row['wall_seconds_max']:.3f}]"
        speedup = "disagree" if math.isnan(row["speedup"]) else f"{row['speedup']:.2f}"
        print(f"{row['sampler']:12s} {row['knob']:5d} {row['network_evaluations']:6d} {wall:>26s} {speedup:>8s} "
              f"{row['evaluation_speedup']:8.2f} {row['classifier_score']:6.3f} {row['frechet_distance']:8.2f}")


if __name__ == "__main__":
    main()
