"""Before a run starts: can this configuration run here? Its data present and intact, its model fitting the
data's channels and (PixelCNN++) its image size, (MADE) k orderings of its family existing on the images,
and the memory it needs (an estimate from the configuration alone) within reach. The one seam through which
the sweep's validation reaches data, orderings and model sizes."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from farm_sweep.data import SPLITS, DataError, DatasetSpec, dataset_label, load_dataset
from farm_sweep.made.network import parameter_count
from farm_sweep.orderings import SYMMETRIES, make_orderings, max_orderings
from farm_sweep.pixelcnn.farm import transform_indices
from farm_sweep.training.config import TrainConfig


class PreflightError(ValueError):
    """A configuration that cannot run on this data; `field` names the configuration field to change."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


def check(config: TrainConfig, shapes: dict[tuple[Any, ...], tuple[int, int, int]] | None = None, *,
          evaluation_batch: int = 0, memory_limit: int | None = None) -> tuple[int, int, int]:
    """The image shape (height, width, channels), once the configuration passes every check; `shapes` caches
    the data checks per (dataset, data_dir, binarize, model) across many configurations. The memory check
    counts an end-of-trial evaluation pushing `evaluation_batch` images through the model at once, against
    `memory_limit` bytes (default: this machine's memory)."""
    shapes = {} if shapes is None else shapes
    key = (config.dataset, config.data_dir, config.binarize, config.model)
    if key not in shapes:
        shapes[key] = _data_shape(config)
    check_memory(config, shapes[key], evaluation_batch, memory_limit)  # before the orderings are made
    if config.model == "made":
        _check_orderings(config, shapes[key][:2])
    else:
        _check_pixelcnn_size(config, shapes[key][:2])
    return shapes[key]


def _data_shape(config: TrainConfig) -> tuple[int, int, int]:
    """The image shape, once the splits a trial reads (train, valid; all three of a spec's one file) pass their
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
    return data.height, data.width, data.channels


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


# ------------------------------------------------------------------ memory

FLOAT = 4  # bytes
COPIES = 4  # of every weight during training: the weight, its gradient and Adam's two moments
MEMORY_CEILING = 2**40  # 1 TiB: no trial needs more (the limit when trials run on a cluster's nodes)
GIB = 2**30
_SIZES = {"evaluation": "evaluation.inpaint.images_per_occlusion or evaluation.sampling.num_samples"}


@dataclass(frozen=True)
class MemoryNeed:
    """An estimate of the bytes one run needs (within a factor of about two), in parts."""

    parameters: int  # weights, and to train also their gradients and Adam's moments
    masks: int  # MADE's masks, orderings, and the masked weight copies a forward pass makes
    batch: int  # one training batch's activations, kept for the backward pass
    evaluation: int  # one evaluation batch (no gradients)
    training: bool = True

    @property
    def total(self) -> int:
        return self.parameters + self.masks + self.batch + self.evaluation

    def describe(self) -> str:
        weights = "weights, gradients and Adam's moments" if self.training else "weights"
        parts = {weights: self.parameters, "masks and orderings": self.masks,
                 "one batch's activations": self.batch, "the evaluation batch": self.evaluation}
        return "; ".join(f"{name} {_gib(size)}" for name, size in parts.items() if size)


def memory_need(config: TrainConfig, shape: tuple[int, int, int], evaluation_batch: int = 0,
                training: bool = True) -> MemoryNeed:
    """What training `config` on images of `shape` (height, width, channels) needs, or only building its model
    (training False), computed from the sizes alone: nothing is allocated, so absurd sizes are cheap to refuse."""
    height, width, channels = shape
    k, sets = config.num_orderings, config.num_orderings if config.weight_sharing == "separate" else 1
    if config.model == "made":
        dim = height * width * channels
        sizes = [dim, *config.hidden_sizes, dim]
        parameters = parameter_count(dim, config.hidden_sizes, k, config.weight_sharing, config.direct_connections)
        per_ordering = dim * (sizes[1] + sizes[-2])  # the input and output masks of each ordering
        shared = sum(a * b for a, b in zip(sizes[1:-2], sizes[2:-1]))  # the hidden masks
        masks = (config.num_masks * (k * per_ordering + shared)  # 0/1 masks, a byte each
                 + 2 * FLOAT * (k * per_ordering + sets * shared)  # masked weights and their gradients
                 + 2 * 8 * k * dim)  # orderings and ranks
        per_image = FLOAT * k * (2 * sum(config.hidden_sizes) + 6 * dim)
    else:  # PixelCNN++: sizes measured on the built network, within 10% for 1 to 5 resnets per stage
        parameters = sets * config.filters ** 2 * config.stages * (140 * config.resnets_per_stage + 50)
        masks = 0
        per_image = FLOAT * k * config.filters * height * width * (30 * config.resnets_per_stage + 10)
    return MemoryNeed(parameters=(COPIES if training else 1) * FLOAT * parameters, masks=masks,
                      batch=config.batch_size * per_image if training else 0,
                      evaluation=evaluation_batch * per_image // 2, training=training)


def physical_memory() -> int:
    """This machine's memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(config: TrainConfig, shape: tuple[int, int, int], evaluation_batch: int = 0,
                 limit: int | None = None, training: bool = True) -> None:
    """PreflightError, naming the field that makes the need largest, when `config` needs more than `limit`
    bytes (default: this machine's memory) for training (or, training False, for building its model)."""
    need = memory_need(config, shape, evaluation_batch, training)
    limit = physical_memory() if limit is None else limit
    if need.total <= limit:
        return
    where = "this machine has" if limit != MEMORY_CEILING else "the most a trial may use is"
    culprit = _largest_driver(config, shape, evaluation_batch, training)
    raise PreflightError(culprit, f"this configuration needs about {_gib(need.total)} of memory ({need.describe()}); "
                         f"{where} {_gib(limit)}; make {_SIZES.get(culprit, culprit)} smaller")


def _largest_driver(config: TrainConfig, shape: tuple[int, int, int], evaluation_batch: int, training: bool) -> str:
    """The size field whose reduction to its least value shrinks the need most."""
    size = {"hidden_sizes": (1,)} if config.model == "made" else {"filters": 1}
    least = {**size, "num_orderings": 1, "num_masks": 1, "batch_size": 1}
    remaining = {name: memory_need(dataclasses.replace(config, **{name: value}), shape, evaluation_batch,
                                   training).total for name, value in least.items()}
    remaining["evaluation"] = memory_need(config, shape, 0, training).total
    return min(remaining, key=remaining.__getitem__)


def _gib(size: int) -> str:
    return f"{size / GIB:,.1f} GiB"
