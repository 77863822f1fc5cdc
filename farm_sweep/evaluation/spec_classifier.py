"""Sample quality on your own data (a DatasetSpec, docs/data.md): the project's MLP trained on its labels.

When the spec names labels, classifier_score and frechet_distance use farm_sweep.quality's MLP (D -> 256 ->
128 -> classes; its 128 ReLU features feed the Frechet distance) trained on the spec's train split, images
flattened and colour levels scaled to [-1, 1] as PixelCNN++ samples are, for max(4, ceil(50,000 / N))
epochs (4 on an MNIST-sized split, more on a small one). The Frechet reference is the spec's test split. It
is cached by farm_sweep.quality.cached_classifier as classifier_npz-<the file's sha256, 16 digits>, so a
changed file trains a new one. Without labels no classifier can be trained: `spec_scorer` says so in the
log and returns an `Unscored` (NaN scores), and the speed-quality curve keeps its speed columns only.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import torch

from farm_sweep.data import DatasetSpec, load_dataset, spec_sha256
from farm_sweep.pixelcnn.logistic_mixture import to_unit
from farm_sweep.quality import DigitClassifier, QualityScorer, accuracy, cached_classifier, one_thread, train_classifier

log = logging.getLogger(__name__)

SETTINGS = {"hidden": [256, 128], "batch_size": 64, "lr": 2e-3, "seed": 0}
MIN_EPOCHS, EXAMPLES_SEEN = 4, 50_000


@dataclass(frozen=True)
class Unscored:
    """The scorer of data no classifier exists for: every score is NaN (not measured)."""

    height: int
    width: int

    def classifier_score(self, images: torch.Tensor) -> float:
        return math.nan

    def frechet_distance(self, images: torch.Tensor) -> float:
        return math.nan


def spec_scorer(spec: DatasetSpec, cache_dir: str | os.PathLike[str] | None = None) -> QualityScorer | Unscored:
    """Scores samples of the spec's data against its test split; Unscored (with a warning) without labels."""
    if spec.labels is None:
        log.warning("%s has no labels, so no classifier can be trained for it: classifier_score and "
                    "frechet_distance are skipped. To score samples, add labels: {train: ..., valid: ..., "
                    "test: ...} to the dataset spec (docs/data.md).", spec.path)
        return Unscored(*spec.shape)
    test = load_dataset(spec, "test")
    return QualityScorer.over(load_spec_classifier(spec, cache_dir), _inputs(spec, test.images), *spec.shape)


def load_spec_classifier(spec: DatasetSpec, cache_dir: str | os.PathLike[str] | None = None) -> DigitClassifier:
    """The cached classifier of the spec's labelled data, trained and cached when missing or stale."""
    train_set = load_dataset(spec, "train")
    dim, classes = train_set.images[0].numel(), int(train_set.labels.max()) + 1
    settings = {**SETTINGS, "data_sha256": spec_sha256(spec), "keys": list(spec.keys), "labels": list(spec.labels),
                "dim": dim, "classes": classes,
                "epochs": max(MIN_EPOCHS, math.ceil(EXAMPLES_SEEN / len(train_set.images)))}

    def train(classifier: DigitClassifier) -> float:
        with one_thread():
            train_classifier(classifier, _inputs(spec, train_set.images), train_set.labels, settings)
        test_set = load_dataset(spec, "test")
        return accuracy(classifier, _inputs(spec, test_set.images), test_set.labels)

    return cached_classifier(f"npz-{settings['data_sha256'][:16]}", settings,
                             lambda: DigitClassifier(dim, settings["hidden"], classes, flatten=True), train, cache_dir)


def _inputs(spec: DatasetSpec, images: torch.Tensor) -> torch.Tensor:
    """Binary pixels as they are; colour levels 0..255 in [-1, 1], as PixelCNN++ samples them."""
    return to_unit(images) if spec.channels == 3 else images
