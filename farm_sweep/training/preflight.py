"""Before a run starts: can this configuration run here? Its data present and intact, its model fitting the
data's channels and (PixelCNN++) its image size, and (MADE) k orderings of its family existing on the images.
The one seam through which the sweep's validation reaches data and orderings."""

from __future__ import annotations

from typing import Any

from farm_sweep.data import SPLITS, DataError, DatasetSpec, dataset_label, load_dataset
from farm_sweep.orderings import SYMMETRIES, make_orderings, max_orderings
from farm_sweep.pixelcnn.farm import transform_indices
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
    else:
        _check_pixelcnn_size(config, shapes[key])
    return shapes[key]


def _data_shape(config: TrainConfig) -> tuple[int, int]:
    """The image size, once the splits a trial reads (train, valid; all three of a spec's one file) pass their
    checksum, format and shape checks (each file is read once per process: farm_sweep.data caches it)."""
    splits = SPLITS if isinstance(config.dataset, DatasetSpec) else ("train", "valid")
    try:
        data = [load_dataset(config.dataset, split, config.data_dir, binarize=config.binarize, seed=config.seed)
                for split in splits][-1]
    except DataError as error:
        raise PreflightError("dataset", str(error)) from error
    if config.model == "made" and data.channels != 1:
        raise PreflightError("dataset", f"{dataset_label(config.dataset)!r} has {data.channels} channels; MADE "
                             "models single-channel binary images: choose digits, binarized_mnist or mnist (or a "
                             "spec with channels: 1), or model pixelcnn")
    return data.height, data.width


def _check_orderings(config: TrainConfig, shape: tuple[int, int]) -> None:
    """k distinct orderings of a deterministic family exist on the images (random families always have k)."""
    if max_orderings(config.ordering_family) is None:
        return
    try:
        make_orderings(config.ordering_family, config.num_orderings, *shape, seed=config.seed)
    except ValueError as error:
        raise PreflightError("num_orderings", str(error)) from error


def _check_pixelcnn_size(config: TrainConfig, shape: tuple[int, int]) -> None:
    """Each stage after the first halves the image; a transform that transposes needs a square one."""
    height, width = shape
    factor = 2 ** (config.stages - 1)
    if height % factor or width % factor:
        raise PreflightError("stages", f"{config.stages} stages halve the {height}x{width} images "
                             f"{config.stages - 1} times, so height and width must be multiples of {factor}; use "
                             "fewer stages")
    transforms = transform_indices(config.num_orderings, config.ordering_family)
    if height != width and any(SYMMETRIES[index][0] for index in transforms):
        raise PreflightError("num_orderings", f"the {height}x{width} images are not square, and ordering_family "
                             f"{config.ordering_family!r} with {config.num_orderings} orderings transposes them; "
                             "use ordering_family symmetries with num_orderings 2 at most (identity, rot180)")
