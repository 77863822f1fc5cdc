"""Benchmark: the batched inpainting computations vs a per-pixel loop like the paper's code, one model.

`--metric exact` (default): the paper's code scored an occlusion with one forward per occluded pixel;
`nll_exact` needs one forward per batch (the orderings its plan uses). Their numbers are compared per image
with each other and with nll_exact in float64 (the value both round): float32 sums in another order differ
by about 1e-6 relative; more than 1e-5 fails.
`--metric chain`: sampling the hole (l2, nll_chain) pixel by pixel, one forward per occluded pixel, vs
`inpaint`'s fixed-point sweeps (each a forward of the usable orderings); the fills must be equal, noise for
noise (a pixel whose uniform lies within float32 rounding of its probability may differ: the count is shown).

Both settings are timed in this run on the same images and occlusions (the paper's protocol by default), by
the project's benchmark method (farm_sweep/timing.py: interleaved, a warm-up round, two runs of 5 rounds, a
ratio published when the runs agree within 20%).

    FARM_DATA_DIR=../shared/data python bench/inpaint_eval.py                     # a quickly trained model
    python bench/inpaint_eval.py --checkpoint runs/trial/checkpoints --num-occlusions 10 --metric chain
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch

from farm_sweep.data import ImageDataset, load_dataset
from farm_sweep.losses import ensemble_log_probs
from farm_sweep.made import inpaint as inpainting
from farm_sweep.made.inpaint import inpaint, nll_exact
from farm_sweep.made.network import FarmMADE
from farm_sweep.occlusions import CASES, FILLS, PROTOCOLS, fill_plan, make_occlusions
from farm_sweep.timing import describe, measure
from farm_sweep.training import checkpoint
from farm_sweep.training.config import TrainConfig
from farm_sweep.training.loop import build_model, resolve_device, train

AGREEMENT = 1e-5  # float32 rounding: two summation orders differ by ~1e-6, each from the float64 value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint folder (epoch_NNNN or the folder holding them)")
    parser.add_argument("--dataset", default="binarized_mnist", help="for the quickly trained model")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--loss", default="mc", help="mc keeps every ordering a model of its own")
    parser.add_argument("--hidden-sizes", type=int, nargs="+", default=[500])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-train-examples", type=int, default=10_000)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def trained_model(args: argparse.Namespace) -> tuple[FarmMADE, ImageDataset]:
    """The checkpoint's model, or one trained quickly (raster family); and its test split."""
    if args.checkpoint:
        path = checkpoint.latest_valid(args.checkpoint) or args.checkpoint
        config = TrainConfig.from_dict(checkpoint.read_state(path)["config"])
    else:
        config = TrainConfig(dataset=args.dataset, num_orderings=args.k, loss=args.loss,
                             hidden_sizes=tuple(args.hidden_sizes),
                             epochs=args.epochs, max_train_examples=args.max_train_examples, device=args.device)
        folder = Path(tempfile.mkdtemp(prefix="farm_bench_"))
        for _ in train(config, folder):
            pass
        path = checkpoint.latest_valid(folder)
    test = load_dataset(config.dataset, "test", config.data_dir)
    model = build_model(config, test.height, test.width)
    checkpoint.load(path, model)
    return model.to(resolve_device(args.device)).eval(), test


@torch.no_grad()
def per_pixel_nll(model: FarmMADE, images: torch.Tensor, occlusion: torch.Tensor, fill: str) -> torch.Tensor:
    """The paper-code way: for each occluded pixel in fill order, one forward (of the orderings usable
    there) of the images with the not-yet-known pixels zeroed; total -log p over the hole per image."""
    plan = fill_plan(model.ranks, occlusion, fill)
    known = ~occlusion.to(images.device)
    total = torch.zeros(len(images), dtype=torch.float64, device=images.device)
    for t, pixel in enumerate(plan.pixels.tolist()):
        used = plan.weights[:, t].nonzero().squeeze(1)
        log_one, log_zero = ensemble_log_probs(model(images * known, used)[:, :, pixel:pixel + 1],
                                               plan.weights[used, t:t + 1].float())
        truth = images[:, pixel]
        total -= (truth * log_one[:, 0] + (1 - truth) * log_zero[:, 0]).double()
        known[pixel] = True
    return total


@torch.no_grad()
def sequential_fill(model: FarmMADE, images: torch.Tensor, occlusion: torch.Tensor, fill: str,
                    generator: torch.Generator) -> torch.Tensor:
    """Sampling the hole by its definition: for each occluded pixel in fill order, one forward (of the
    orderings usable there) of the current fill, x_d = 1[u_d < p_d] with inpaint's uniforms."""
    plan = fill_plan(model.ranks, occlusion, fill)
    x = images * ~occlusion.to(images.device)
    noise = torch.rand(len(images), len(plan.pixels), generator=generator).to(images.device)
    for t, pixel in enumerate(plan.pixels.tolist()):
        used = plan.weights[:, t].nonzero().squeeze(1)
        log_one, _ = ensemble_log_probs(model(x, used)[:, :, pixel:pixel + 1], plan.weights[used, t:t + 1].float())
        x[:, pixel] = (noise[:, t] < log_one[:, 0].exp()).to(x.dtype)
    return x


def count_sweeps(blocks: list[tuple[torch.Tensor, torch.Tensor]], model: FarmMADE, fill: str) -> int:
    """The fixed point's forwards over every occlusion (each call of inpaint's batched predictor, counted)."""
    predictor, calls = inpainting._mask_logits, []

    def counted(*args, **kwargs):
        calls.append(1)
        return predictor(*args, **kwargs)

    inpainting._mask_logits = counted
    try:
        for hole, batch in blocks:
            inpaint(model, batch, hole, fill, torch.Generator().manual_seed(0))
    finally:
        inpainting._mask_logits = predictor
    return len(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--case", default="average", choices=CASES)
    parser.add_argument("--fill", default="evidence_weighted", choices=FILLS)
    parser.add_argument("--protocol", default="paper", choices=PROTOCOLS, help="how the occlusions are drawn")
    parser.add_argument("--num-occlusions", type=int, default=100)
    parser.add_argument("--images-per-occlusion", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, fixed while timing")
    parser.add_argument("--metric", default="exact", choices=["exact", "chain"],
                        help="teacher-forced nll_exact, or the sampled fill (l2, nll_chain)")
    args = parser.parse_args()
    model, test = trained_model(args)
    if model.num_masks > 1:
        raise SystemExit("the per-pixel reference covers models with one hidden-mask set (num_masks = 1)")
    device = next(model.parameters()).device
    images = test.images[torch.randperm(len(test.images), generator=torch.Generator().manual_seed(0))]
    images = images[:args.num_occlusions * args.images_per_occlusion].to(device)
    occlusions = make_occlusions(args.case, args.num_occlusions, test.height, test.width, 0, args.protocol)
    blocks = list(zip(occlusions, images.split(args.images_per_occlusion)))
    if args.metric == "chain":
        return compare_fills(model, blocks, args, device)
    settings = {"loop": lambda: [per_pixel_nll(model, batch, hole, args.fill) for hole, batch in blocks],
                "nll_exact": lambda: [nll_exact(model, batch, hole, args.fill).double().sum(1)
                                      for hole, batch in blocks]}
    m = measure(settings, threads=args.threads, synchronize=torch.cuda.synchronize if device.type == "cuda" else None)
    reference, ours = (torch.cat(m.results[name]) for name in ("loop", "nll_exact"))
    exact64 = copy.deepcopy(model).double()  # the float64 value both float32 computations round
    truth = torch.cat([nll_exact(exact64, batch.double(), hole, args.fill).sum(1) for hole, batch in blocks])
    worst = {name: relative(a, b) for name, (a, b) in
             {"loop vs nll_exact": (reference, ours), "loop vs float64": (reference, truth),
              "nll_exact vs float64": (ours, truth)}.items()}
    sizes = occlusions.sum(1)
    print(f"{test.name}, k={model.k}, hidden {model.hidden_sizes}, {device}; {args.case} case, fill {args.fill}, "
          f"protocol {args.protocol}: {args.num_occlusions} occlusions x {args.images_per_occlusion} images "
          f"(holes of {int(sizes.min())}-{int(sizes.max())} pixels, mean {sizes.float().mean():.1f}; "
          f"{int(sizes.sum()) * args.images_per_occlusion} occluded pixels)")
    for name, forwards, what in (("loop", int(sizes.sum()), "per-pixel loop (paper code)"),
                                 ("nll_exact", args.num_occlusions, "batched nll_exact")):
        timing = m.timing(name)
        print(f"{what:28s} {timing.median:9.3f} s  [{timing.low:.3f}-{timing.high:.3f}]  ({forwards} forwards)")
    ratio = m.ratio("loop", "nll_exact")
    runs = ", ".join(f"{r:.1f}x" for r in m.run_ratios("loop", "nll_exact"))
    print(f"speed-up: {'not published, the runs disagree' if ratio is None else f'{ratio:.1f}x'} (runs: {runs})")
    print("largest relative difference per image (float32 sums in another order differ by ~1e-6): "
          + ", ".join(f"{name} {value:.1e}" for name, value in worst.items()))
    print(f"method: {describe(m)}")
    if max(worst.values()) > AGREEMENT:
        raise SystemExit(f"the computations disagree by more than {AGREEMENT:g}")


def compare_fills(model: FarmMADE, blocks: list[tuple[torch.Tensor, torch.Tensor]], args: argparse.Namespace,
                  device: torch.device) -> None:
    def fills(method):
        return lambda: [method(model, batch, hole, args.fill, torch.Generator().manual_seed(0))
                        for hole, batch in blocks]

    settings = {"sequential": fills(sequential_fill), "fixed_point": fills(lambda *a: inpaint(*a)[0])}
    m = measure(settings, threads=args.threads, synchronize=torch.cuda.synchronize if device.type == "cuda" else None)
    sequential, fixed = (torch.cat(m.results[name]) for name in ("sequential", "fixed_point"))
    pixels = sum(int(hole.sum()) for hole, _ in blocks)
    print(f"{model.k} orderings, hidden {model.hidden_sizes}, {device}; {args.case} case, fill {args.fill}, protocol "
          f"{args.protocol}: {len(blocks)} occlusions x {args.images_per_occlusion} images ({pixels} hole pixels)")
    for name, forwards in (("sequential", pixels), ("fixed_point", count_sweeps(blocks, model, args.fill))):
        timing = m.timing(name)
        print(f"{name:12s} {timing.median:9.3f} s  [{timing.low:.3f}-{timing.high:.3f}]  ({forwards} forwards)")
    ratio = m.ratio("sequential", "fixed_point")
    runs = ", ".join(f"{r:.1f}x" for r in m.run_ratios("sequential", "fixed_point"))
    print(f"speed-up: {'not published, the runs disagree' if ratio is None else f'{ratio:.1f}x'} (runs: {runs})")
    print(f"pixels filled differently: {int((sequential != fixed).sum())} of {sequential.numel()}")
    print(f"method: {describe(m)}")


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest relative difference per image (absolute below 1 nat)."""
    return ((a.double() - b.double()).abs() / b.double().abs().clamp_min(1)).max().item()


if __name__ == "__main__":
    main()
