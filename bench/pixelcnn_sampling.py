"""Sequential vs wavefront vs fixed-point sampling of a tiny PixelCNN++ on CPU, side by side in one run.

Two networks of the same size, briefly trained on CIFAR-10 so that pixels depend on their context: the
`raster` one (sequential, fixed_point, and wavefront as an approximation) and the `antidiagonal` one
(sequential along anti-diagonals, wavefront exact, fixed_point). The same batch and noise for every
sampler; per sampler: network evaluations, wall seconds, ratios to that network's sequential sampler,
and whether the sample equals the sequential one bit for bit.

    python bench/pixelcnn_sampling.py --train-minutes 1
"""

from __future__ import annotations

import argparse
import time

import torch
from pixelcnn_gpu_check import train_for  # bench/ is the script's folder

from farm_sweep.data import load_dataset
from farm_sweep.pixelcnn.sampling import sample
from farm_sweep.pixelcnn.task import PixelCNNTask
from farm_sweep.training.config import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--train-minutes", type=float, default=1.0, help="per network")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = load_dataset("cifar10", "train").images
    noise = torch.rand(args.batch, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    print(f"batch {args.batch}, {args.filters} filters, 1 resnet per stage, 3 stages, {args.threads} thread(s)")
    print(f"{'network':13s} {'sampler':11s} {'knob':>4s} {'evals':>6s} {'seconds':>8s} {'eval ratio':>10s} "
          f"{'wall ratio':>10s}  equal to sequential")
    for causal in ("raster", "antidiagonal"):
        config = TrainConfig(dataset="cifar10", model="pixelcnn", ordering_family="paper", filters=args.filters,
                             resnets_per_stage=1, mixtures=5, dropout=0.0, batch_size=16, lr=2e-3, causal=causal)
        task = PixelCNNTask(config)
        torch.manual_seed(0)
        model = task.build(32, 32, 3)
        steps, _ = train_for(task, model, images, args.train_minutes, torch.device("cpu"))
        reference, base_evals, base_seconds = None, 0, 0.0
        for sampler, knob in (("sequential", None), ("wavefront", 4), ("wavefront", None), ("fixed_point", None)):
            began = time.perf_counter()
            samples, evaluations = sample(model, sampler, args.batch, 32, 32, knob, noise=noise)
            seconds = time.perf_counter() - began
            if reference is None:
                reference, base_evals, base_seconds = samples, evaluations, seconds
            print(f"{causal:13s} {sampler:11s} {knob or '-':>4} {evaluations:6d} {seconds:8.2f} "
                  f"{base_evals / evaluations:9.1f}x {base_seconds / seconds:9.1f}x  "
                  f"{torch.equal(samples, reference)}  (trained {steps} steps)")


if __name__ == "__main__":
    main()
