"""Benchmark: sampler settings against `sequential` (same batch, same noise, same run) with their sample
quality, for a trained checkpoint or a quickly trained model. Timed by the project's benchmark method
(farm_sweep/timing.py, through the speed-quality curve itself): settings interleaved round-robin, a warm-up
round, two runs of 5 rounds, median [min-max]; a speed-up is published only when the two runs agree within
20%. Quality: classifier score and Frechet distance of the timed batch, and with --quality-samples N of N
samples per setting (the same noise for every setting; `sequential`'s N samples are drawn by the exact
fixed point, checked bit for bit against sequential on the timed batch).

    FARM_DATA_DIR=../shared/data python bench/sampling.py                  # a quickly trained model
    python bench/sampling.py --checkpoint CKPT --settings sequential:1 cached_sequential:1 fixed_point:784 \\
        fixed_point:7 --num-samples 100 --quality-samples 1000 --threads 1
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
from farm_sweep.made.sampling import curve_settings, draw_masks, sample, speed_quality_curve  # noqa: E402


def setting(text: str) -> tuple[str, int]:
    sampler, _, knob = text.partition(":")
    return sampler, int(knob or 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--settings", type=setting, nargs="+", help="sampler:knob ... (default: the curve's); "
                        "the first is the reference of the ratios")
    parser.add_argument("--num-samples", type=int, default=100, help="the timed batch")
    parser.add_argument("--quality-samples", type=int, default=None, help="samples per setting for quality")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, fixed while timing")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per run (at least 5)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, test = trained_model(args)
    settings = args.settings or curve_settings(model.k, model.dim)
    scorer = quality_scorer(test.name, cache_dir=None)
    generator = torch.Generator().manual_seed(args.seed)
    noise, masks = torch.rand(args.num_samples, model.dim, generator=generator), draw_masks(model, args.num_samples,
                                                                                          generator)
    exact = torch.equal(sample(model, "sequential", args.num_samples, noise=noise, masks=masks)[0],
                        sample(model, "fixed_point", args.num_samples, noise=noise, masks=masks)[0])
    rows = speed_quality_curve(model, test.height, test.width, scorer, args.num_samples, args.seed, settings,
                               args.rounds)
    quality = {}
    if args.quality_samples:
        generator = torch.Generator().manual_seed(args.seed + 1)
        noise = torch.rand(args.quality_samples, model.dim, generator=generator)
        masks = draw_masks(model, args.quality_samples, generator)
        for sampler, knob in settings:
            drawn, drawn_knob = ("fixed_point", model.dim) if sampler == "sequential" else (sampler, knob)
            samples, _ = sample(model, drawn, args.quality_samples, drawn_knob, noise=noise, masks=masks)
            quality[sampler, knob] = (scorer.classifier_score(samples), scorer.frechet_distance(samples))
    print(f"{test.name}, k={model.k}, hidden {model.hidden_sizes}, {next(model.parameters()).device}, "
          f"{args.num_samples} samples timed, {rows[0]['threads']} torch thread(s); fixed_point == sequential bit "
          f"for bit: {exact}")
    print(f"real test images: classifier_score {scorer.classifier_score(test.images):.3f}")
    extra = f" {'score N':>8s} {'frechet N':>9s}" if quality else ""
    print(f"{'sampler':17s} {'knob':>5s} {'evals':>6s} {'seconds median [min-max]':>26s} {'speed-up':>8s} "
          f"{'evals x':>8s} {'score':>6s} {'frechet':>8s}{extra}")
    for row in rows:
        wall = f"{row['wall_seconds']:.3f} [{row['wall_seconds_min']:.3f}-{row['wall_seconds_max']:.3f}]"
        speedup = "disagree" if math.isnan(row["speedup"]) else f"{row['speedup']:.2f}"
        more = quality.get((row["sampler"], row["knob"]))
        more_text = f" {more[0]:8.3f} {more[1]:9.2f}" if more else ""
        print(f"{row['sampler']:17s} {row['knob']:5d} {row['network_evaluations']:6d} {wall:>26s} {speedup:>8s} "
              f"{row['evaluation_speedup']:8.2f} {row['classifier_score']:6.3f} {row['frechet_distance']:8.2f}"
              f"{more_text}")
    if quality:
        print(f"quality N = {args.quality_samples} samples per setting")


if __name__ == "__main__":
    main()
