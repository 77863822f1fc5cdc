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

from farm_sweep.data import ImageDataset, load_dataset
from farm_sweep.made.task import MadeTask
from farm_sweep.pixelcnn.task import PixelCNNTask
from farm_sweep.training import checkpoint, preflight
from farm_sweep.training.config import ConfigError, TrainConfig
from farm_sweep.untrusted import InputError, parse_json


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the run cannot continue meaningfully."""


def print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but no CUDA GPU is visible; use device: auto or cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


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
    """Yield one metrics dict per epoch (epoch, train_loss, main_loss, divergence, nll_image, ...).

    Checkpoints go to `checkpoint_dir` after every epoch (the dict's "checkpoint" names the folder).
    Training resumes from `resume_from`, or else from the newest valid checkpoint in `checkpoint_dir`."""
    device = resolve_device(config.device)
    task = task_for(config)
    train_set, valid_set = load_split(config, "train"), load_split(config, "valid")
    images = train_set.images[:config.max_train_examples]
    model = build_model(config, train_set.height, train_set.width, train_set.channels).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    start = resume_from or (checkpoint.latest_valid(checkpoint_dir) if checkpoint_dir else None)
    history = checkpoint.load(start, model, optimizer)["history"] if start else []
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    for epoch in range(len(history) + 1, config.epochs + 1):
        began = time.perf_counter()
        model.train()
        sums = _train_epoch(task, model, optimizer, images, epoch, (epoch - 1) * steps_per_epoch, device)
        model.eval()
        metrics = {"epoch": epoch, **sums, **task.evaluate(model, valid_set.images),
                   "seconds": time.perf_counter() - began}
        history.append(metrics)
        if checkpoint_dir is not None:
            state = {"epoch": epoch, "config": config.to_dict(), "history": history}
            metrics = {**metrics, "checkpoint": str(checkpoint.save(checkpoint_dir, model, optimizer, state))}
        if progress:
            progress(f"epoch {epoch}/{config.epochs}  train_loss {metrics['train_loss']:.4f}  "
                     f"valid nll_image {metrics['nll_image']:.2f} nats  ({metrics['seconds']:.1f}s)")
        yield metrics


def _train_epoch(task: Task, model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                 epoch: int, step: int, device: torch.device) -> dict[str, float]:
    config = task.config
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    permutation = torch.randperm(len(images), generator=generator)
    totals: dict[str, torch.Tensor] = {}
    batches = 0
    for start in range(0, len(images), config.batch_size):
        x = task.batch(images[permutation[start:start + config.batch_size]], generator)
        loss, parts = task.loss(model, x.to(device), step)
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
    parser = argparse.ArgumentParser(description="Train one FARM configuration without Ray.")
    parser.add_argument("--config", type=_json_object, default={},
                        help='a JSON object of TrainConfig fields, e.g. \'{"num_orderings": 8}\'')
    parser.add_argument("--checkpoint-dir", type=Path, default=None)
    parser.add_argument("--test", action="store_true", help="also report nll_image on the test split at the end")
    args = parser.parse_args(argv)
    try:
        config = TrainConfig.from_dict(args.config)
        preflight.check(config)
    except ConfigError as error:
        print(f"error: --config: {error}", file=sys.stderr)
        return 2
    except preflight.PreflightError as error:
        print(f"error: --config: {error.field}: {error.reason}", file=sys.stderr)
        return 2
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.checkpoint_dir or Path(scratch)
        *_, metrics = train(config, folder)
        metrics["wall_seconds"] = time.perf_counter() - began
        if args.test:
            model, _ = load_model(Path(metrics["checkpoint"]), str(resolve_device(config.device)))
            test = load_split(config, "test")
            metrics.update({f"test_{k}": v for k, v in task_for(config).evaluate(model, test.images).items()})
    print(json.dumps({k: v for k, v in metrics.items() if "nll_image_ordering" not in k}, indent=2))
    return 0

