"""Train one configuration, one epoch at a time, with exact checkpoint/resume.

`train(config)` is a generator of per-epoch metrics: the same function runs alone for debugging
(`python -m farm_sweep.train --help`) and inside a Ray Tune trial. Everything random is derived from
(seed, epoch, step), so a run resumed from a checkpoint continues exactly as if never stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from farm_sweep.data import DatasetSpec, ImageDataset, load_dataset, spec_sha256
from farm_sweep.made.likelihood import PER_ORDERING
from farm_sweep.made.task import MadeTask
from farm_sweep.pixelcnn.task import PixelCNNTask
from farm_sweep.training import checkpoint, early_stopping, preflight
from farm_sweep.training.config import ConfigError, TrainConfig
from farm_sweep.training.curve import write_curve
from farm_sweep.training.device import resolve_device
from farm_sweep.training.schedule import learning_rate
from farm_sweep.untrusted import InputError, parse_json


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the run cannot continue meaningfully."""


def print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Task(Protocol):
    """What training needs to know about one kind of model (farm_sweep/made/task.py is the template)."""

    config: TrainConfig

    def build(self, height: int, width: int, channels: int) -> torch.nn.Module: ...

    def batch(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...

    def loss(self, model: Any, x: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def evaluate(self, model: Any, images: torch.Tensor) -> dict[str, float]: ...


TASKS: dict[str, type[Task]] = {"made": MadeTask, "pixelcnn": PixelCNNTask}


def task_for(config: TrainConfig) -> Task:
    if config.model not in TASKS:
        raise ConfigError(f"model: {config.model!r} cannot be trained yet; choose one of {', '.join(TASKS)}")
    return TASKS[config.model](config)


def build_model(config: TrainConfig, height: int, width: int, channels: int = 1) -> torch.nn.Module:
    """The configuration's untrained model; PreflightError, before anything is allocated, when it cannot fit."""
    preflight.check_memory(config, (height, width, channels), training=False)
    torch.manual_seed(config.seed)
    return task_for(config).build(height, width, channels)


def load_model(checkpoint_folder: Path, device: str = "cpu") -> tuple[torch.nn.Module, TrainConfig]:
    """The trained model and its config from a checkpoint folder (epoch_NNNN), verified before anything in it
    is used, in eval mode."""
    checkpoint.verify(checkpoint_folder)
    config = TrainConfig.from_dict(checkpoint.read_state(checkpoint_folder)["config"])
    shape = load_split(config, "valid")
    model = build_model(config, shape.height, shape.width, shape.channels)
    checkpoint.load(checkpoint_folder, model)
    return model.to(device).eval(), config


def load_split(config: TrainConfig, split: str) -> ImageDataset:
    return load_dataset(config.dataset, split, config.data_dir, binarize=config.binarize, seed=config.seed)


def train(config: TrainConfig, checkpoint_dir: Path | None = None, resume_from: Path | None = None,
          progress: Callable[[str], None] | None = print_progress) -> Iterator[dict[str, Any]]:
    """Yield one metrics dict per epoch (epoch, train_loss, main_loss, divergence, nll_image, ...); the last
    one has `final` (and `stopped_early`). With early stopping each also has `best_epoch` and
    `best_nll_image`, and the run ends with its best epoch's weights in the model and the last checkpoint.

    Checkpoints go to `checkpoint_dir` after every epoch (the dict's "checkpoint" names the folder).
    Training resumes from `resume_from`, or else from the newest valid checkpoint in `checkpoint_dir`; a run
    that stopped early yields nothing more (one that ran its epochs continues if config.epochs grew)."""
    device = resolve_device(config.device)
    task = task_for(config)
    train_set, valid_set = load_split(config, "train"), load_split(config, "valid")
    images = train_set.images[:config.max_train_examples]
    model = build_model(config, train_set.height, train_set.width, train_set.channels).to(device)
    # fused: one kernel per step instead of a dozen passes over the weights; with per-ordering layers (14-25M
    # parameters at 2 x 1000, all updated every step) the unfused update costs more than the forward and backward
    # (BENCHMARKS.md)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)

    start = resume_from or (checkpoint.latest_valid(checkpoint_dir) if checkpoint_dir else None)
    state = checkpoint.load(start, model, optimizer) if start else {"history": []}
    history, rule = state["history"], config.early_stopping
    if state.get("stopped_early"):
        return
    best = _restored_best(start, model) if rule else None
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    for epoch in range(len(history) + 1, config.epochs + 1):
        began = time.perf_counter()
        model.train()
        sums = _train_epoch(task, model, optimizer, images, epoch, steps_per_epoch, device)
        model.eval()
        metrics = {"epoch": epoch, **sums, **task.evaluate(model, valid_set.images),
                   "seconds": time.perf_counter() - began}
        history.append(dict(metrics))  # the raw epoch; what is added below is about the run
        final = epoch == config.epochs or early_stopping.should_stop(history, rule)
        if rule:
            best_epoch = early_stopping.best_epoch(history, rule.min_delta)
            best = _weights(model) if best_epoch == epoch else best
            if final and best_epoch != epoch:
                model.load_state_dict(best)
            metrics |= {"best_epoch": best_epoch, "best_nll_image": history[best_epoch - 1]["nll_image"]}
        if final:
            metrics |= {"final": True, "stopped_early": epoch < config.epochs}
        if checkpoint_dir is not None:
            state = {"epoch": epoch, "config": config.to_dict(), "history": history,
                     "stopped_early": metrics.get("stopped_early", False)}
            kept_best = best if rule and not final and best_epoch != epoch else None
            metrics["checkpoint"] = str(checkpoint.save(checkpoint_dir, model, optimizer, state, kept_best))
        if progress:
            progress(_progress_line(metrics, config.epochs))
        yield metrics
        if final:
            return


def _restored_best(start: Path | None, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The best epoch's weights when resuming: stored beside the checkpoint, or the checkpoint's own."""
    if start is None:
        return None
    return checkpoint.load_best(start) or _weights(model)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def _progress_line(metrics: dict[str, Any], epochs: int) -> str:
    line = (f"epoch {metrics['epoch']}/{epochs}  train_loss {metrics['train_loss']:.4f}  "
            f"valid nll_image {metrics['nll_image']:.2f} nats  ({metrics['seconds']:.1f}s)")
    if "best_epoch" in metrics:
        line += f"  best {metrics['best_nll_image']:.2f} at epoch {metrics['best_epoch']}"
    if metrics.get("stopped_early"):
        line += "  stopped early: no improvement"
    return line


def _train_epoch(task: Task, model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                 epoch: int, steps_per_epoch: int, device: torch.device) -> dict[str, float]:
    config = task.config
    step = (epoch - 1) * steps_per_epoch
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    permutation = torch.randperm(len(images), generator=generator)
    totals: dict[str, torch.Tensor] = {}
    batches = 0
    for start in range(0, len(images), config.batch_size):
        x = task.batch(images[permutation[start:start + config.batch_size]], generator)
        loss, parts = task.loss(model, x.to(device), step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step, steps_per_epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for name, value in {"train_loss": loss.detach(), **parts}.items():
            totals[name] = totals.get(name, 0) + value
        batches += 1
        step += 1
    means = {name: float(total) / batches for name, total in totals.items()}
    if not math.isfinite(means["train_loss"]):
        raise NonFiniteLossError(f"epoch {epoch}: train_loss is {means['train_loss']} (lr={config.lr}); "
                                 f"lower lr or divergence_weight")
    return means


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = parse_json(text)
    except InputError as error:
        raise argparse.ArgumentTypeError(f"{error}; give a JSON object") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object {{\"field\": value, ...}} is needed, not "
                                         f"{type(value).__name__}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = TrainConfig.from_dict(args.config)
        preflight.check(config)
    except ConfigError as error:
        print(f"error: --config: {error}", file=sys.stderr)
        return 2
    except preflight.PreflightError as error:
        print(f"error: --config: {error.field}: {error.reason}", file=sys.stderr)
        return 2
    problem = _resume_problem(args.checkpoint_dir, args.resume)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.checkpoint_dir or Path(scratch)
        for metrics in train(config, folder):
            if args.curve:
                write_curve(checkpoint.read_state(Path(metrics["checkpoint"]))["history"], args.curve,
                            _label(config))
        last = checkpoint.latest_valid(folder)
        history = checkpoint.read_state(last)["history"]
        summary = {**history[-1], "epochs": len(history), "train_seconds": sum(h["seconds"] for h in history),
                   "wall_seconds": time.perf_counter() - began, "checkpoint": str(last)}
        if isinstance(config.dataset, DatasetSpec):
            summary["dataset_sha256"] = spec_sha256(config.dataset)
        if config.early_stopping:
            best = early_stopping.best_epoch(history, config.early_stopping.min_delta)
            summary |= {"best_epoch": best, "best_nll_image": history[best - 1]["nll_image"]}
        if args.test:
            model, _ = load_model(last, str(resolve_device(config.device)))
            test = load_split(config, "test")
            summary |= _test_summary(task_for(config).evaluate(model, test.images))
    print(json.dumps({k: v for k, v in summary.items() if not k.startswith(PER_ORDERING)}, indent=2))
    return 0


def _test_summary(metrics: dict[str, float]) -> dict[str, Any]:
    """The test split's metrics as `test_<name>`, each ordering's own `nll_image` gathered into one list."""
    summary = {f"test_{k}": v for k, v in metrics.items() if not k.startswith(PER_ORDERING)}
    per_ordering = [round(v, 2) for k, v in metrics.items() if k.startswith(PER_ORDERING)]  # in ordering order
    if len(per_ordering) > 1:
        summary["test_nll_image_per_ordering"] = per_ordering
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m farm_sweep.train",
                                     description="Train one FARM configuration without Ray.")
    parser.add_argument("--config", type=_json_object, default={},
                        help='TrainConfig fields as JSON, e.g. \'{"num_orderings": 8}\'')
    parser.add_argument("--checkpoint-dir", type=Path, default=None,
                        help="keep checkpoints here (default: a temporary folder); a run killed halfway "
                             "continues with --resume")
    parser.add_argument("--resume", action="store_true", help="continue the run in --checkpoint-dir")
    parser.add_argument("--curve", type=Path, default=None,
                        help="write the learning curve after every epoch: this CSV and a PNG beside it")
    parser.add_argument("--test", action="store_true", help="also report nll_image on the test split at the end")
    return parser


def _resume_problem(folder: Path | None, resume: bool) -> str | None:
    """--resume needs a run to continue; without it, a folder holding one is refused, never overwritten."""
    held = folder is not None and bool(checkpoint.checkpoints(folder))
    if resume and not held:
        return f"--resume: no checkpoint to continue in --checkpoint-dir {folder}; run without --resume"
    if held and not resume:
        return (f"--checkpoint-dir: {folder} holds checkpoints of an earlier run; pass --resume to continue it, "
                "or choose another folder")
    return None


def _label(config: TrainConfig) -> str:
    return (f"{config.model} k={config.num_orderings} {config.weight_sharing} hidden {list(config.hidden_sizes)}"
            f"{' +direct' if config.direct_connections else ''}")
