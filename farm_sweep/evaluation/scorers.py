"""The sample-quality scorer for a dataset: the digit MLP (farm_sweep.quality) or the CIFAR-10 CNN."""

from __future__ import annotations

import os

from farm_sweep.evaluation.cifar_classifier import cifar_scorer
from farm_sweep.quality import CIFAR, QualityScorer


def quality_scorer(dataset: str, data_dir: str | os.PathLike[str] | None = None,
                   cache_dir: str | os.PathLike[str] | None = None) -> QualityScorer:
    """Scores samples of `dataset` against its test split (cifar10: a CNN on images in [-1, 1])."""
    if dataset == CIFAR:
        return cifar_scorer(data_dir, cache_dir)
    return QualityScorer.for_dataset(dataset, data_dir, cache_dir)
