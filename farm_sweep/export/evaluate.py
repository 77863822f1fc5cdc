"""Evaluate an exported model on the test split: `python -m farm_sweep.evaluate EXPORT_DIR
[--task nll|inpaint|sample] [--json] [--per-image CSV]`.

nll: whole-image test NLL in nats (the k-ordering mixture, and each ordering alone) and bits per dimension;
`--per-image` also writes each test image's nll_image and bpd (farm_sweep.export.predict, what the export's
MLflow Model answers) to a CSV file.
inpaint: the occlusion protocol (DESIGN 4) on the test split. sample: the speed-quality curve (DESIGN 5).
The model is read from the export format (farm_sweep.export.format.load_export); nothing is unpickled.
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

from farm_sweep.data import DataError, dataset_label, load_dataset
from farm_sweep.export import predict
from farm_sweep.export.format import CONFIG, ExportError, load_export
from farm_sweep.made.likelihood import nll_image
from farm_sweep.made.network import FarmMADE
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


def write_per_image(model: FarmMADE, config: TrainConfig, path: Path) -> Path:
    """One row per test image, in the split's order: image (its index), nll_image (nats), bpd."""
    test = load_dataset(config.dataset, "test", config.data_dir, binarize=config.binarize, seed=config.seed)
    target = predict.image_model(model, test.height, test.width)
    values = predict.nll(target, test.images.reshape(-1, *target.shape))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", *values])
        writer.writerows([index, *row] for index, row in enumerate(zip(*(v.tolist() for v in values.values()))))
    return path


def evaluate(model: FarmMADE, config: TrainConfig, task: str) -> dict[str, float]:
    """Test-split metrics for one task."""
    if task == "nll":
        test = load_dataset(config.dataset, "test", config.data_dir, binarize=config.binarize, seed=config.seed)
        if test.images[0].numel() != model.dim:
            raise DataError(f"its test images have {test.images[0].numel()} pixels, the model {model.dim}; the "
                            "export's config.yaml names another dataset than the model's: restore it, or re-export")
        metrics = nll_image(model, test.images)
        return {**metrics, "bpd": metrics["nll_image"] / (model.dim * math.log(2))}
    from farm_sweep.evaluation.end_of_trial import evaluate_trained_model  # heavy: inpainting and sampling

    with tempfile.TemporaryDirectory() as scratch:
        metrics, _ = evaluate_trained_model(model, config, Path(scratch), SETTINGS[task])
    return metrics

