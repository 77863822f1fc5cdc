"""Sample quality on CIFAR-10 (DESIGN 4): a small CNN the project trains on the CIFAR-10 train split it has.

Inception weights cannot be downloaded here, so classifier_score and frechet_distance use this network:
three conv blocks (32, 64, 128 filters, each conv 3x3 + ReLU + 2x2 max-pool), then 128 ReLU features
(the Frechet features) and a 10-way head; input: images (N, 3, 32, 32) in [-1, 1]. It trains with Adam
on the train split (9,000 images with only data_batch_1 present), horizontal flips as augmentation, on
torch's default number of threads (unlike the small digit MLP, a CNN gains from them), and is cached
beside the digit classifiers by farm_sweep.quality.cached_classifier (FARM_CACHE_DIR, default
~/.cache/farm_sweep) as classifier_cifar10.safetensors plus a JSON with its settings, test accuracy and
the weights' sha256 (a mismatch retrains). `quality_scorer("cifar10")` (farm_sweep.evaluation.scorers) returns it.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from farm_sweep.data import load_dataset
from farm_sweep.pixelcnn.logistic_mixture import to_unit
from farm_sweep.quality import CIFAR, QualityScorer, accuracy, cached_classifier, train_classifier

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
    """The cached classifier, trained (minutes, on torch's default threads) and cached when missing or bad."""
    def train(classifier: CifarClassifier) -> float:
        train_set = load_dataset(CIFAR, "train", data_dir)
        images = to_unit(train_set.images)
        train_classifier(classifier, torch.cat([images, images.flip(-1)]), train_set.labels.repeat(2), SETTINGS)
        test_set = load_dataset(CIFAR, "test", data_dir)
        return accuracy(classifier, to_unit(test_set.images), test_set.labels)

    return cached_classifier(CIFAR, SETTINGS, lambda: CifarClassifier(SETTINGS["filters"], SETTINGS["features"]),
                             train, cache_dir)


def cifar_scorer(data_dir: str | os.PathLike[str] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None) -> QualityScorer:
    """farm_sweep.quality's scorer over this classifier: images (N, 3, 32, 32) in [-1, 1], Frechet
    reference = the CIFAR-10 test split."""
    test = load_dataset(CIFAR, "test", data_dir)
    return QualityScorer.over(load_cifar_classifier(data_dir, cache_dir), to_unit(test.images), 32, 32)
