"""Sequential vs wavefront vs fixed-point sampling of a tiny PixelCNN++ on CPU, side by side in one run.

Two networks of the same size, briefly trained on CIFAR-10 so that pixels depend on their context: the
`raster` one (sequential, fixed_point, and wavefront as an approximation) and the `antidiagonal` one
(sequential along anti-diagonals, wavefront exact, fixed_point). The same batch and noise for every
sampler; per sampler: network evaluations, wall seconds, ratios to that network's sequential sampler,
and whether the sample equals the sequential one bit for bit. Timed by the project's benchmark method
(farm_sweep/timing.py): a network's samplers interleaved round-robin, a warm-up round, two runs of 5 rounds,
median [min-max]; a wall ratio is published only when the two runs agree within 20%.

    python bench/pixelcnn_sampling.py --train-minutes 1 [--causal raster antidiagonal] [--batch 4]
"""

from __future__ import annotations

import argparse

import torch
from pixelcnn_gpu_check import train_for  # bench/ is the script's folder

from farm_sweep.data import load_dataset
from farm_sweep.pixelcnn.sampling import sample
from farm_sweep.pixelcnn.task import PixelCNNTask
from farm_sweep.timing import describe, fixed_threads, measure
from farm_sweep.training.config import TrainConfig

SETTINGS = (("sequential", None), ("wavefront", 4), ("wavefront", None), ("fixed_point", None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--train-minutes", type=float, default=1.0, help="per network")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, fixed while training and timing")
    parser.add_argument("--causal", nargs="+", default=["raster", "antidiagonal"], choices=["raster", "antidiagonal"],
                        help="the networks to measure")
    args = parser.parse_args()
    images = load_dataset("cifar10", "train").images
    noise = torch.rand(args.batch, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    print(f"batch {args.batch}, {args.filters} filters, 1 resnet per stage, 3 stages")
    print(f"{'network':13s} {'sampler':11s} {'knob':>4s} {'evals':>6s} {'seconds median [min-max]':>25s} "
          f"{'eval ratio':>10s} {'wall ratio':>10s}  equal to sequential")
    for causal in args.causal:
        config = TrainConfig(dataset="cifar10", model="pixelcnn", ordering_family="paper", filters=args.filters,
                             resnets_per_stage=1, mixtures=5, dropout=0.0, batch_size=16, lr=2e-3, causal=causal)
        task = PixelCNNTask(config)
        torch.manual_seed(0)
        model = task.build(32, 32, 3)
        with fixed_threads(args.threads):
            steps, _ = train_for(task, model, images, args.train_minutes, torch.device("cpu"))
        names = [f"{sampler}/{knob or '-'}" for sampler, knob in SETTINGS]
        m = measure({name: (lambda s=s, k=k, net=model: sample(net, s, args.batch, 32, 32, k, noise=noise))
                     for name, (s, k) in zip(names, SETTINGS)}, threads=args.threads)
        reference, base_evaluations = m.results[names[0]]
        for name, (sampler, knob) in zip(names, SETTINGS):
            samples, evaluations = m.results[name]
            timing, ratio = m.timing(name), m.ratio(names[0], name)
            wall = f"{timing.median:.2f} [{timing.low:.2f}-{timing.high:.2f}]"
            shown = "disagree" if ratio is None else f"{ratio:.1f}x"
            print(f"{causal:13s} {sampler:11s} {knob or '-':>4} {evaluations:6d} {wall:>25s} "
                  f"{base_evaluations / evaluations:9.1f}x {shown:>10s}  {torch.equal(samples, reference)}  "
                  f"(trained {steps} steps)", flush=True)
    print(f"method: {describe(m)}")


if __name__ == "__main__":
    main()
