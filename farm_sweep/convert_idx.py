"""Convert MNIST-format IDX files to a dataset npz for your own data (docs/data.md, *Bring your own data*):

    python -m farm_sweep.convert_idx --train-images TRAIN.gz --test-images TEST.gz \\
        [--train-labels LABELS.gz --test-labels LABELS.gz] --out FILE.npz [--valid-size 10000] [--seed 0] [--limit N]

Pixels are binarized the way binarized MNIST was made: each is drawn once from Bernoulli(pixel / 255) with a
fixed seed. It is the same draw as load_dataset("mnist", binarize="static", seed=SEED): independent streams
for the training and the test file, each over the whole file. The last --valid-size images of the training
file become the valid split. --limit keeps the first N images of each file (to try it on a slice). The npz
holds train_data, valid_data and test_data (uint8 (N, H, W) in {0, 1}) and, with labels, train_labels,
valid_labels and test_labels. The command prints the dataset spec to put in a study file, its sha256
included. It never overwrites an existing file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from farm_sweep.data import SPLITS, DataError, binarize_idx, read_idx
from farm_sweep.integrity import file_sha256

STREAMS = {"train": 0, "test": 1}  # load_dataset("mnist")'s binarization stream of each file


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.out.exists():
        print(f"error: --out: {args.out} already exists; choose another file, or move it away first", file=sys.stderr)
        return 2
    try:
        arrays = convert(args.train_images, args.test_images, args.train_labels, args.test_labels,
                         valid_size=args.valid_size, seed=args.seed, limit=args.limit)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_npz(arrays, args.out)
    spec = spec_of(arrays, args.out)
    counts = ", ".join(f"{split} {len(arrays[f'{split}_data'])}" for split in SPLITS)
    height, width = spec["shape"]
    print(f"wrote {args.out}: {counts} binary {height}x{width} images (seed {args.seed})"
          f"{', with labels' if spec['labels'] else ''}\n"
          "its dataset spec (in a study file, make the path relative to the study file's folder):\n"
          + yaml.safe_dump({"dataset": spec}, sort_keys=False, default_flow_style=None), end="")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m farm_sweep.convert_idx", description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-images", type=Path, required=True, help="gzipped IDX images (N, H, W) to train on")
    parser.add_argument("--test-images", type=Path, required=True, help="gzipped IDX images (N, H, W) to test on")
    parser.add_argument("--train-labels", type=Path, help="gzipped IDX labels (N,) of the training images")
    parser.add_argument("--test-labels", type=Path, help="gzipped IDX labels (N,) of the test images")
    parser.add_argument("--out", type=Path, required=True, help="the npz file to write (must not exist)")
    parser.add_argument("--valid-size", type=_count, default=10_000,
                        help="the last this many training images are the valid split (default 10000, as MNIST)")
    parser.add_argument("--seed", type=int, choices=range(2**32), metavar="SEED", default=0,
                        help="the binarization's seed, 0..2**32-1 (default 0)")
    parser.add_argument("--limit", type=_count, help="keep only the first N images of each file")
    return parser


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r:.40} must be a whole number >= 1")
    return int(text)


def convert(train_images: Path, test_images: Path, train_labels: Path | None = None, test_labels: Path | None = None,
            *, valid_size: int = 10_000, seed: int = 0, limit: int | None = None) -> dict[str, np.ndarray]:
    """The npz's arrays: binarized images of the three splits, and their labels when both label files are given."""
    if (train_labels is None) != (test_labels is None):
        raise DataError("--train-labels and --test-labels: give both label files, or neither")
    files = {"train": (train_images, train_labels), "test": (test_images, test_labels)}
    parts = {part: _read_pair(images, labels, seed, STREAMS[part], limit) for part, (images, labels) in files.items()}
    (train, train_tags), (test, test_tags) = parts["train"], parts["test"]
    if train.shape[1:] != test.shape[1:]:
        raise DataError(f"{train_images} holds {train.shape[1:]} images but {test_images} {test.shape[1:]}; every "
                        "split must hold images of one size")
    if len(train) <= valid_size:
        raise DataError(f"{train_images}: {len(train)} images, not more than --valid-size {valid_size}; give a "
                        "smaller --valid-size (or a larger --limit)")
    cut = len(train) - valid_size
    arrays = {"train_data": train[:cut], "valid_data": train[cut:], "test_data": test}
    if train_tags is not None:
        arrays |= {"train_labels": train_tags[:cut], "valid_labels": train_tags[cut:], "test_labels": test_tags}
    return arrays


def _read_pair(images_path: Path, labels_path: Path | None, seed: int, stream: int,
               limit: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The first `limit` images of a file, binarized (uint8 (N, H, W)), and their labels (int64) if given."""
    images = read_idx(images_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: IDX dims {images.shape}; images must be (N, H, W) (magic 0x00000803)")
    bits = binarize_idx(images_path, seed, stream)[:limit].astype(np.uint8)
    if labels_path is None:
        return bits, None
    labels = read_idx(labels_path)
    if labels.shape != (len(images),):
        raise DataError(f"{labels_path}: IDX dims {labels.shape}; expected one label per image of {images_path} "
                        f"({len(images)},)")
    return bits, labels[:limit].astype(np.int64)


def write_npz(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write via a temporary file renamed into place, so a stopped conversion leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(staging, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    os.replace(staging, path)


def spec_of(arrays: dict[str, np.ndarray], path: Path) -> dict[str, Any]:
    """The dataset spec of a converted file (its path as given)."""
    labelled = "train_labels" in arrays
    return {"format": "npz", "path": str(path), "shape": list(arrays["train_data"].shape[1:]), "channels": 1,
            "keys": {split: f"{split}_data" for split in SPLITS},
            "labels": {split: f"{split}_labels" for split in SPLITS} if labelled else None,
            "sha256": file_sha256(path)}


if __name__ == "__main__":
    sys.exit(main())
