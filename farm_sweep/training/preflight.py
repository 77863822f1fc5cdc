"""Before a run starts: can this configuration run here? Its data present and intact, its model fitting the
data's channels, and (MADE) k orderings of its family existing on the images. The one seam through which
the sweep's validation reaches data and orderings."""

from __future__ import annotations

from typing import Any

from farm_sweep.data import DataError, load_dataset
from farm_sweep.orderings import make_orderings, max_orderings
from farm_sweep.training.config import TrainConfig


class PreflightError(ValueError):
    """A configuration that cannot run on this data; `field` names the configuration field to change."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


def check(config: TrainConfig, shapes: dict[tuple[Any, ...], tuple[int, int]] | None = None) -> tuple[int, int]:
    """The image size (height, width), once the configuration passes every check; `shapes` caches the data
    checks per (dataset, data_dir, binarize, model) across many configurations."""
    shapes = {} if shapes is None else shapes
    key = (config.dataset, config.data_dir, config.binarize, config.model)
    if key not in shapes:
        shapes[key] = _data_shape(config)
    if config.model == "made":
        _check_orderings(config, shapes[key])
    return shapes[key]


def _data_shape(config: TrainConfig) -> tuple[int, int]:
    """The image size, once the splits a trial reads (train, valid) pass their checksum, format and shape
    checks (each file is read once per process: farm_sweep.data caches it)."""
    try:
        data = [load_dataset(config.dataset, split, config.data_dir, binarize=config.binarize, seed=config.seed)
                for split in ("train", "valid")][-1]
    except DataError as error:
        raise PreflightError("dataset", str(error)) from error
    if config.model == "made" and data.channels != 1:
        raise PreflightError("dataset", f"{config.dataset!r} has {data.channels} channels; MADE models "
                             "single-channel binary images: choose digits, binarized_mnist or mnist, or model pixelcnn")
    return data.height, data.width


def _check_orderings(config: TrainConfig, shape: tuple[int, int]) -> None:
    """k distinct orderings of a deterministic family exist on the images (random families always have k)."""
    if max_orderings(config.ordering_family) is None:
        return
    try:
        make_orderings(config.ordering_family, config.num_orderings, *shape, seed=config.seed)
    except ValueError as error:
        raise PreflightError("num_orderings", str(error)) from error
