"""Benchmark: speed-up of every sampler over `sequential` (same batch, same noise, same run) with its
sample quality, for a trained checkpoint or a quickly trained model.

    FARM_DATA_DIR=../shared/data python bench/sampling.py                  # a quickly trained model
    python bench/sampling.py --checkpoint runs/trial/checkpoints --num-samples 500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from inpaint_eval import add_model_arguments, trained_model  # noqa: E402

from farm_sweep.evaluation.scorers import quality_scorer
from farm_sweep.made.sampling import sample, speed_quality_curve  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, test = trained_model(args)
    scorer = quality_scorer(test.name, cache_dir=None)
    noise = torch.rand(args.num_samples, model.dim, generator=torch.Generator().manual_seed(args.seed))
    exact = torch.equal(sample(model, "sequential", args.num_samples, noise=noise)[0],
                        sample(model, "fixed_point", args.num_samples, noise=noise)[0])
    rows = speed_quality_curve(model, test.height, test.width, scorer, args.num_samples, args.seed)
    print(f"{test.name}, k={model.k}, hidden {model.hidden_sizes}, {next(model.parameters()).device}, "
          f"{args.num_samples} samples; fixed_point == sequential bit for bit: {exact}")
    print(f"real test images: classifier_score {scorer.classifier_score(test.images):.3f}")
    print(f"{'sampler':12s} {'knob':>5s} {'evals':>6s} {'seconds':>8s} {'speed-up':>8s} {'evals x':>8s} "
          f"{'score':>6s} {'frechet':>8s}")
    for row in rows:
        print(f"{row['sampler']:12s} {row['knob']:5d} {row['network_evaluations']:6d} {row['wall_seconds']:8.3f} "
              f"{row['speedup']:8.2f} {row['evaluation_speedup']:8.2f} {row['classifier_score']:6.3f} "
              f"{row['frechet_distance']:8.2f}")


if __name__ == "__main__":
    main()
