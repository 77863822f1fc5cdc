"""Evaluate an exported model on the test split: `python -m farm_sweep.evaluate EXPORT_DIR
[--task nll|inpaint|sample] [--json] [--per-image CSV]`.

nll: whole-image test NLL in nats (the k-ordering mixture, and each ordering alone) and bits per dimension;
`--per-image` also writes each test image's nll_image and bpd (farm_sweep.export.predict, what the export's
MLflow Model answers) to a CSV file.
inpaint: the occlusion protocol (DESIGN 4) on the test split. sample: the speed-quality curve (DESIGN 5).
The model is read from its export format, farm-made/2 or farm-pixelcnn/1 (farm_sweep.export.formats); nothing
is unpickled. `evaluate_images` gives the values of each of a batch of images under an export folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from farm_sweep.data import DataError, dataset_label, load_dataset
from farm_sweep.export import predict
from farm_sweep.export.folder import CONFIG, ExportError
from farm_sweep.export.formats import load_export
from farm_sweep.made import likelihood as made_likelihood
from farm_sweep.made.network import FarmMADE
from farm_sweep.pixelcnn import task as pixelcnn_task
from farm_sweep.pixelcnn.task import FarmPixelCNNWithEma
from farm_sweep.training.config import TrainConfig

TASKS = ("nll", "inpaint", "sample")
SETTINGS = {"inpaint": {"inpaint": {"split": "test"}, "sampling": None},
            "sample": {"inpaint": None, "sampling": {}}}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.per_image and args.task != "nll":
        return _fail(f"--per-image: per-image values are those of --task nll, not {args.task}; leave out one of them")
    try:
        model, config, _ = load_export(args.export_dir)
        metrics = evaluate(model, config, args.task)
        if args.per_image:
            write_per_image(model, config, args.per_image)
    except ExportError as error:
        return _fail(str(error))
    except DataError as error:
        return _fail(f"{args.export_dir / CONFIG}: dataset {dataset_label(config.dataset)!r}: {error}")
    except OSError as error:
        return _fail(f"{args.per_image}: --per-image: cannot write it ({error.strerror or error}); choose a writable "
                     "path")
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        width = max(map(len, metrics))
        print("\n".join(f"{name:<{width}}  {value:.4f}" for name, value in metrics.items()))
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m farm_sweep.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", type=Path, help="one exported model folder (python -m farm_sweep.export)")
    parser.add_argument("--task", choices=TASKS, default="nll")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--per-image", type=Path, metavar="CSV",
                        help="with --task nll: also write each test image's nll_image and bpd to this CSV file")
    return parser


def write_per_image(model: FarmMADE | FarmPixelCNNWithEma, config: TrainConfig, path: Path) -> Path:
    """One row per test image, in the split's order: image (its index), nll_image (nats), bpd."""
    test = load_dataset(config.dataset, "test", config.data_dir, binarize=config.binarize, seed=config.seed)
    target = predict.image_model(model, test.height, test.width)
    values = predict.nll(target, test.images.reshape(-1, *target.shape))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", *values])
        writer.writerows([index, *row] for index, row in enumerate(zip(*(v.tolist() for v in values.values()))))
    return path


def evaluate(model: FarmMADE | FarmPixelCNNWithEma, config: TrainConfig, task: str) -> dict[str, float]:
    """Test-split metrics for one task."""
    if task == "nll":
        test = load_dataset(config.dataset, "test", config.data_dir, binarize=config.binarize, seed=config.seed)
        _check_fits(model, test.images[0])
        return nll_metrics(model, test.images)
    from farm_sweep.evaluation.end_of_trial import evaluate_trained_model  # heavy: inpainting and sampling

    with tempfile.TemporaryDirectory() as scratch:
        metrics, _ = evaluate_trained_model(model, config, Path(scratch), SETTINGS[task])
    return metrics


def _check_fits(model: FarmMADE | FarmPixelCNNWithEma, image: torch.Tensor) -> None:
    if isinstance(model, FarmMADE):
        have, need, unit = image.numel(), model.dim, "pixels"
    else:
        have, need, unit = image.shape[0], model.config.channels, "channel(s)"
    if have != need:
        raise DataError(f"its test images have {have} {unit}, the model {need}; the export's config.yaml names "
                        "another dataset than the model's: restore it, or re-export")


def nll_metrics(model: FarmMADE | FarmPixelCNNWithEma, images: torch.Tensor) -> dict[str, float]:
    """`nll_image` (the mixture's, nats per image), each ordering's and `bpd` (bits per dimension) on images."""
    if isinstance(model, FarmMADE):
        metrics = made_likelihood.nll_image(model, images)
        return {**metrics, "bpd": metrics["nll_image"] / (model.dim * math.log(2))}
    with model.averaged():
        return pixelcnn_task.likelihood_metrics(model, images)


def evaluate_images(export_dir: Path, images: Any) -> dict[str, list[float]]:
    """`nll_image` (-log p(x) of the k-ordering mixture, nats) and `bpd` (bits per dimension) of each of N images
    (array-like) under the export in `export_dir`, of either format: binary pixels (N, H, W) for FARM+MADE,
    levels 0..255 (N, C, H, W) for FARM+PixelCNN++ (farm_sweep.export.predict.nll). ExportError for a bad export,
    ValueError for images the export does not take."""
    target, _ = predict.load(export_dir)
    return {name: values.tolist() for name, values in predict.nll(target, images).items()}
