"""The FARM+PixelCNN++ GPU check (bench/gpu_check.sh runs it): everything it measures is printed.

1. Training: the canonical PixelCNN++ (k=1) and the paper's k=2 FARM model (canonical + rot90_cw, shared
   weights, `mc` loss) train for --train-minutes each on CIFAR-10's train split; bits/dim on CIFAR-10
   test[:--eval-images] before and after (k=2: the mixture and each ordering).
2. Sampling, batch --sample-batch: `sequential` (raster network, H*W = 1024 evaluations) against
   `wavefront` (anti-diagonal network, 2H-1 = 63 evaluations), both of the paper's size (160 filters, 5
   resnets per stage, 10 mixtures; timing does not depend on the weights), in this run. One network
   evaluation of each network is timed by the project's benchmark method (farm_sweep/timing.py), a
   sampler's time being its evaluations x that; each sampler also runs once, for its evaluation count. The paper:
   192.57 s vs 28.92 s, 6.7x; the step-count limit on 32x32 is 1024/63 = 16.3x. Also `sequential` on the
   anti-diagonal network: the same-network ratio (the raster network's two streams cost about twice the
   anti-diagonal network's one per evaluation). Then `fixed_point` on the
   trained canonical model against its `sequential` sample with the same noise (exact: equal samples).
3. Inpainting: hole bits/dim, teacher-forced and along the sampled fill (the paper's Table 3 kind), of the
   canonical baseline and of FARM k=2 (best evidence, evidence-weighted mixture) on the `best`, `average`
   and `top_half` cases (--occlusions x 16 test images), and a Table-4 figure.

Exit status 1 when a check fails: bits/dim must fall for both models, every number must be finite, the
samplers must take 1024 and 63 evaluations, fixed_point must reproduce the sequential sample.
--tiny shrinks every size and time for a CPU proof run.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from farm_sweep.data import load_dataset
from farm_sweep.pixelcnn.farm import FarmPixelCNN
from farm_sweep.pixelcnn.inpaint import CASES, evaluate_inpainting, inpainting_figure
from farm_sweep.pixelcnn.network import PixelCNNConfig
from farm_sweep.pixelcnn.sampling import sample
from farm_sweep.pixelcnn.task import PixelCNNTask
from farm_sweep.timing import Timing, describe, measure
from farm_sweep.training.config import TrainConfig

PAPER_SECONDS = {"sequential": 192.57, "wavefront": 28.92}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--train-minutes", type=float, default=3.0, help="per model")
    parser.add_argument("--filters", type=int, default=96, help="trained models")
    parser.add_argument("--resnets", type=int, default=3, help="trained models: resnets per stage")
    parser.add_argument("--mixtures", type=int, default=10, help="trained models")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-images", type=int, default=1000, help="first N of CIFAR-10 test[:1000]")
    parser.add_argument("--sample-batch", type=int, default=16)
    parser.add_argument("--sample-filters", type=int, default=160, help="the timed networks (paper: 160)")
    parser.add_argument("--sample-resnets", type=int, default=5, help="the timed networks (paper: 5)")
    parser.add_argument("--occlusions", type=int, default=5,
                        help="inpainting: occlusions x 16 images (the paper: 15; each sampled fill costs one "
                             "forward per hole pixel)")
    parser.add_argument("--out", type=Path, default=Path("results/gpu_check"))
    parser.add_argument("--data-dir", default=None, help="default: $FARM_DATA_DIR")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes and times: a CPU proof run")
    args = parser.parse_args()
    if args.tiny:
        args.train_minutes, args.filters, args.resnets, args.mixtures, args.eval_images = 0.25, 8, 1, 2, 48
        args.sample_batch, args.sample_filters, args.sample_resnets, args.occlusions = 2, 8, 1, 2
        args.threads = args.threads or 1
    return args


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def require(self, ok: bool, what: str) -> None:
        print(f"  check {'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            self.failed.append(what)


def train_for(task: PixelCNNTask, model: FarmPixelCNN, images: torch.Tensor, minutes: float,
              device: torch.device) -> tuple[int, float]:
    """Adam on task.loss with random minibatches until the time is up; returns (steps, seconds)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=task.config.lr)
    generator = torch.Generator().manual_seed(task.config.seed)
    model.train()
    began, step = time.perf_counter(), 0
    while time.perf_counter() - began < 60 * minutes:
        x = task.batch(images[torch.randint(len(images), (task.config.batch_size,), generator=generator)], generator)
        loss, _ = task.loss(model, x.to(device), step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 200 == 0:
            print(f"    step {step}: train {loss.item() / (3072 * math.log(2)):.3f} bits/dim "
                  f"({time.perf_counter() - began:.0f}s)", flush=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    model.eval()
    return step, time.perf_counter() - began


def train_models(args: argparse.Namespace, device: torch.device, checks: Checks) -> dict[str, FarmPixelCNN]:
    train = load_dataset("cifar10", "train", args.data_dir).images
    test = load_dataset("cifar10", "test", args.data_dir).images[:args.eval_images]
    models = {}
    for name, k in (("canonical", 1), ("farm_k2", 2)):
        config = TrainConfig(dataset="cifar10", model="pixelcnn", ordering_family="paper", num_orderings=k,
                             filters=args.filters, resnets_per_stage=args.resnets, mixtures=args.mixtures,
                             dropout=0.0, loss="mc", resample_every=1, batch_size=args.batch_size, lr=args.lr)
        task = PixelCNNTask(config)
        torch.manual_seed(0)
        model = task.build(32, 32, 3).to(device).eval()
        print(f"\n[{name}] transforms {model.transforms}, {sum(p.numel() for p in model.parameters()):,} parameters",
              flush=True)
        before = task.evaluate(model, test)
        steps, seconds = train_for(task, model, train, args.train_minutes, device)
        after = task.evaluate(model, test)
        per_ordering = ", ".join(f"{key} {value:.3f}" for key, value in after.items() if key.startswith("bpd_ordering"))
        print(f"  {name}: {before['bpd']:.3f} -> {after['bpd']:.3f} bits/dim on CIFAR-10 test[:{len(test)}] after "
              f"{steps} steps x {args.batch_size} images in {seconds / 60:.1f} min ({per_ordering})", flush=True)
        checks.require(math.isfinite(after["bpd"]) and after["bpd"] < before["bpd"] - 0.1, f"{name}: bits/dim fell")
        models[name] = model
    return models


def time_sampler(model: FarmPixelCNN, sampler: str, noise: torch.Tensor) -> tuple[torch.Tensor, int, float]:
    sync = torch.cuda.synchronize if noise.is_cuda else (lambda: None)
    sync()
    began = time.perf_counter()
    samples, evaluations = sample(model, sampler, len(noise), 32, 32, noise=noise)
    sync()
    return samples, evaluations, time.perf_counter() - began


def check_sampling(args: argparse.Namespace, canonical: FarmPixelCNN, device: torch.device, checks: Checks) -> None:
    print(f"\n[sampling] batch {args.sample_batch}, networks of {args.sample_filters} filters, "
          f"{args.sample_resnets} resnets per stage", flush=True)
    noise = torch.rand(args.sample_batch, 4, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    networks = {}
    for causal in ("raster", "antidiagonal"):
        torch.manual_seed(0)
        config = PixelCNNConfig(filters=args.sample_filters, resnets_per_stage=args.sample_resnets,
                                mixtures=10, causal=causal)
        networks[causal] = FarmPixelCNN(config, (0,)).to(device).eval()
    # A whole sequential sample takes minutes, too long to repeat 11 times: the benchmark method times one
    # network evaluation of each network (the samplers' unit of work), and a sampler's time is its
    # evaluations x that; every sampler also runs once, for its evaluation count.
    x = noise[:, 1:] * 2 - 1
    with torch.no_grad():
        m = measure({causal: (lambda net=net: net.params(x, [0])) for causal, net in networks.items()},
                    threads=args.threads, synchronize=torch.cuda.synchronize if device.type == "cuda" else None)
    print(f"  one network evaluation: raster {milliseconds(m.timing('raster'))}, anti-diagonal "
          f"{milliseconds(m.timing('antidiagonal'))} ({describe(m)})", flush=True)
    for causal, runs in (("raster", (("sequential", 1024),)),
                         ("antidiagonal", (("sequential", 1024), ("wavefront", 63)))):
        for sampler, steps in runs:
            _, evaluations, seconds = time_sampler(networks[causal], sampler, noise)
            print(f"  {sampler:10s} ({causal} network): {evaluations} evaluations, one run {seconds:.2f} s, "
                  f"evaluations x median {evaluations * m.timing(causal).median:.2f} s", flush=True)
            checks.require(evaluations == steps, f"{sampler} takes {steps} evaluations")
    ratio = m.ratio("raster", "antidiagonal")
    shown = "not published (the two runs disagree)" if ratio is None else f"{1024 / 63 * ratio:.1f}x"
    print(f"  canonical sequential vs anti-diagonal wavefront: {shown} (paper {PAPER_SECONDS['sequential']} s vs "
          f"{PAPER_SECONDS['wavefront']} s = {PAPER_SECONDS['sequential'] / PAPER_SECONDS['wavefront']:.1f}x); on the "
          f"same anti-diagonal network {1024 / 63:.1f}x (the step-count limit)", flush=True)
    reference, evaluations, sequential = time_sampler(canonical, "sequential", noise)
    fixed, iterations, fixed_seconds = time_sampler(canonical, "fixed_point", noise)
    print(f"  trained canonical model: sequential {evaluations} evaluations, fixed_point {iterations} evaluations "
          f"({evaluations / iterations:.1f}x fewer, on the same network; one run each: {sequential:.2f} s and "
          f"{fixed_seconds:.2f} s)", flush=True)
    differing = (fixed != reference).float().mean().item()
    print(f"  fixed_point sample equals the sequential one: {torch.equal(fixed, reference)} "
          f"({100 * differing:.4f}% of sub-pixels differ; a GPU's convolutions may round differently)", flush=True)
    checks.require(differing < 1e-3, "fixed_point reproduces the sequential sample")


def milliseconds(timing: Timing) -> str:
    return f"{timing.median * 1e3:.1f} ms [{timing.low * 1e3:.1f}-{timing.high * 1e3:.1f}]"


def check_inpainting(args: argparse.Namespace, models: dict[str, FarmPixelCNN], checks: Checks) -> None:
    images = load_dataset("cifar10", "test", args.data_dir).images
    print(f"\n[inpainting] hole bits/dim, teacher-forced (exact) / along the sampled fill (chain), "
          f"{args.occlusions} occlusions x 16 test images", flush=True)
    for case in CASES:
        baseline = evaluate_inpainting(models["canonical"], images, case, ("single",), args.occlusions)
        farm = evaluate_inpainting(models["farm_k2"], images, case, ("single", "best_evidence", "evidence_weighted"),
                                   args.occlusions)

        def both(metrics: dict[str, float], fill: str) -> str:
            return f"{metrics[f'{fill}/bpd_exact']:.3f} / {metrics[f'{fill}/bpd_chain']:.3f}"

        print(f"  {case:9s} canonical {both(baseline, 'single')} | FARM k=2: canonical ordering "
              f"{both(farm, 'single')}, best evidence {both(farm, 'best_evidence')}, "
              f"evidence-weighted {both(farm, 'evidence_weighted')} "
              f"(occluded {100 * farm['occluded_fraction']:.0f}%)", flush=True)
        checks.require(all(math.isfinite(v) for v in (*baseline.values(), *farm.values())), f"{case}: finite")
    figure = inpainting_figure(models["farm_k2"], images[16:24], args.out / "inpainting_best.png",
                               baseline=models["canonical"], case="best")
    print(f"  figure: {figure}", flush=True)


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    began = time.perf_counter()
    checks = Checks()
    models = train_models(args, device, checks)
    check_sampling(args, models["canonical"], device, checks)
    check_inpainting(args, models, checks)
    print(f"\n{len(checks.failed)} failed check(s) in {(time.perf_counter() - began) / 60:.1f} min"
          + (": " + "; ".join(checks.failed) if checks.failed else ""))
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
