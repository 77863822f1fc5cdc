"""Train a tiny FARM + PixelCNN++ on CIFAR-10 for a fixed number of minutes on CPU; print bits/dim.

Data: the `train` split of the CIFAR-10 binary batches under $FARM_DATA_DIR/cifar10 (with only
data_batch_1.bin present: its first 9,000 images; the last 1,000 are the validation split) and bits/dim
on the first --eval-images of CIFAR-10 test[:1000], before and after training. With --orderings k > 1 the
paper's transform set of size k trains with the `mc` loss on all k orderings at once and bits/dim is that
of the mixture -log (1/k) sum_i p_i(x).

    python bench/pixelcnn_tiny_train.py --minutes 5
"""

from __future__ import annotations

import argparse
import time

import torch

from farm_sweep.data import load_dataset
from farm_sweep.models.farm_pixelcnn import (
    FarmPixelCNN,
    bits_per_dim,
    farm_loss,
    mixture_nll,
    transform_indices,
)
from farm_sweep.models.logistic_mixture import to_unit
from farm_sweep.models.pixelcnn import PixelCNNConfig


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="training time budget")
    parser.add_argument("--filters", type=int, default=32)
    parser.add_argument("--resnets", type=int, default=1, help="resnets per stage")
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--mixtures", type=int, default=5)
    parser.add_argument("--dropout", type=float, default=0.0, help="0: a few minutes cannot overfit")
    parser.add_argument("--orderings", type=int, default=1, help="k of the paper's transform sets")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-images", type=int, default=1000, help="first N of CIFAR-10 test[:1000]")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--data-dir", default=None, help="default: $FARM_DATA_DIR")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


@torch.no_grad()
def evaluate_bits_per_dim(model: FarmPixelCNN, images: torch.Tensor, batch_size: int = 100) -> float:
    model.eval()
    nats = 0.0
    for start in range(0, len(images), batch_size):
        x = to_unit(images[start:start + batch_size])
        nats += mixture_nll(model(x)).item() * len(x)
    model.train()
    return bits_per_dim(nats / len(images), images[0].numel())


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train = load_dataset("cifar10", "train", args.data_dir).images
    test = load_dataset("cifar10", "test", args.data_dir).images[:args.eval_images]
    config = PixelCNNConfig(filters=args.filters, resnets_per_stage=args.resnets, stages=args.stages,
                            mixtures=args.mixtures, dropout=args.dropout)
    model = FarmPixelCNN(config, transform_indices(args.orderings))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    weights = model.evidence_weights(32, 32)
    print(f"config {config}, orderings {model.transforms}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters; "
          f"train {len(train)} images, test[:{len(test)}]")

    began = time.perf_counter()
    before = evaluate_bits_per_dim(model, test)
    print(f"before: {before:.3f} bits/dim on CIFAR-10 test[:{len(test)}] ({time.perf_counter() - began:.0f}s)")

    began, steps = time.perf_counter(), 0
    generator = torch.Generator().manual_seed(args.seed)
    while time.perf_counter() - began < 60 * args.minutes:
        x = to_unit(train[torch.randint(len(train), (args.batch_size,), generator=generator)])
        loss, _ = farm_loss(model.params(x), x, weights, "mc")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        if steps % 100 == 0:
            print(f"step {steps}: train {bits_per_dim(loss.item(), x[0].numel()):.3f} bits/dim "
                  f"({time.perf_counter() - began:.0f}s)")
    trained = time.perf_counter() - began

    after = evaluate_bits_per_dim(model, test)
    print(f"after {steps} steps x {args.batch_size} images in {trained:.0f}s: "
          f"{after:.3f} bits/dim on CIFAR-10 test[:{len(test)}] (before {before:.3f})")


if __name__ == "__main__":
    main()
