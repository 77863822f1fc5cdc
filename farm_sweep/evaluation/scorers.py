"""The sample-quality scorer for a dataset: the digit MLP (farm_sweep.quality), the CIFAR-10 CNN, or for your own
data the MLP trained on its labels (none without labels)."""

from __future__ import annotations

import os

from farm_sweep.data import DatasetSpec
from farm_sweep.evaluation.cifar_classifier import cifar_scorer
from farm_sweep.evaluation.spec_classifier import Unscored, spec_scorer
from farm_sweep.quality import CIFAR, QualityScorer


def quality_scorer(dataset: str | DatasetSpec, data_dir: str | os.PathLike[str] | None = None,
                   cache_dir: str | os.PathLike[str] | None = None) -> QualityScorer | Unscored:
    """Scores samples of `dataset` against its test split (cifar10: a CNN on images in [-1, 1]); Unscored for a
    spec without labels."""
    if isinstance(dataset, DatasetSpec):
        return spec_scorer(dataset, cache_dir)
    if dataset == CIFAR:
        return cifar_scorer(data_dir, cache_dir)
    return QualityScorer.for_dataset(dataset, data_dir, cache_dir)
