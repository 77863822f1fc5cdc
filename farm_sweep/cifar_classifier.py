"""Sample quality on CIFAR-10 (DESIGN 4): a small CNN the project trains on the CIFAR-10 train split it has.

Inception weights cannot be downloaded here, so classifier_score and frechet_distance use this network:
three conv blocks (32, 64, 128 filters, each conv 3x3 + ReLU + 2x2 max-pool), then 128 ReLU features
(the Frechet features) and a 10-way head; input: images (N, 3, 32, 32) in [-1, 1]. It trains with Adam
on the train split (9,000 images with only data_batch_1 present), horizontal flips as augmentation, and
is cached beside the digit classifiers of farm_sweep.quality (FARM_CACHE_DIR, default
~/.cache/farm_sweep) as classifier_cifar10.safetensors plus a JSON with its settings, test accuracy and
the weights' sha256; quality.py's cache checks apply (a mismatch retrains).
"""

from __future__ import annotations

import json
import logging
import os
import time

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from farm_sweep.data import load_dataset
from farm_sweep.models.logistic_mixture import to_unit
from farm_sweep.quality import (
    QualityScorer,
    _cache_problem,
    _features,
    _gaussian,
    _replace,
    _sha256,
    _train,
    resolve_cache_dir,
)

log = logging.getLogger(__name__)

NAME = "cifar10"
SETTINGS = {"filters": [32, 64, 128], "features": 128, "epochs": 10, "batch_size": 64, "lr": 2e-3, "seed": 0,
            "augment": "flip"}


class CifarClassifier(nn.Module):
    def __init__(self, filters: list[int], features: int) -> None:
        super().__init__()
        sizes = [3, *filters]
        blocks = [m for a, b in zip(sizes, sizes[1:])
                  for m in (nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))]
        side = 32 // 2 ** len(filters)
        self.features = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(filters[-1] * side * side, features), nn.ReLU())
        self.head = nn.Linear(features, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load_cifar_classifier(data_dir: str | os.PathLike[str] | None = None,
                          cache_dir: str | os.PathLike[str] | None = None) -> CifarClassifier:
    """The cached classifier, trained (a few minutes on one CPU thread) and cached when missing or bad."""
    folder = resolve_cache_dir(cache_dir)
    weights, record = folder / f"classifier_{NAME}.safetensors", folder / f"classifier_{NAME}.json"
    classifier = CifarClassifier(SETTINGS["filters"], SETTINGS["features"])
    reason = _cache_problem(weights, record, SETTINGS)
    if reason is None:
        classifier.load_state_dict(load_file(weights))
        return classifier.eval()
    log.warning("training the CIFAR-10 classifier (%s)", reason)
    began = time.perf_counter()
    train_set = load_dataset(NAME, "train", data_dir)
    images = to_unit(train_set.images)
    _train(classifier, torch.cat([images, images.flip(-1)]), train_set.labels.repeat(2), SETTINGS)
    test_set = load_dataset(NAME, "test", data_dir)
    with torch.no_grad():
        accuracy = (classifier(to_unit(test_set.images)).argmax(1) == test_set.labels).float().mean().item()
    folder.mkdir(parents=True, exist_ok=True)
    _replace(weights, lambda path: save_file(classifier.state_dict(), path))
    summary = {"settings": SETTINGS, "sha256": _sha256(weights), "test_accuracy": accuracy,
               "train_seconds": time.perf_counter() - began}
    _replace(record, lambda path: path.write_text(json.dumps(summary, indent=2)))
    return classifier.eval()


def cifar_scorer(data_dir: str | os.PathLike[str] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None) -> QualityScorer:
    """farm_sweep.quality's scorer over this classifier: images (N, 3, 32, 32) in [-1, 1], Frechet
    reference = the CIFAR-10 test split."""
    classifier = load_cifar_classifier(data_dir, cache_dir)
    test = load_dataset(NAME, "test", data_dir)
    mean, cov = _gaussian(_features(classifier, to_unit(test.images)))
    return QualityScorer(classifier, mean, cov, 32, 32)
