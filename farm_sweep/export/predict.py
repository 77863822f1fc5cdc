"""What an exported model answers for a batch of images, per image, for either model family: the likelihood
(`nll`), inpainting a hole (`inpaint`) and drawing samples (`sample`). The MLflow Model (farm_sweep.export.pyfunc),
`python -m farm_sweep.evaluate --per-image` and farm_sweep.export.evaluate.evaluate_images answer with these.

Images are arrays in their natural shape: binary images (N, H, W) of 0 and 1 for FARM+MADE, 8-bit colour images
(N, C, H, W) of 0..255 for FARM+PixelCNN++. Every answer is a mapping of numpy arrays whose first axis is the
image: `nll` gives `nll_image` (nats per image: -log of the k-ordering mixture) and `bpd` (bits per dimension).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from farm_sweep import occlusions
from farm_sweep.export.formats import input_shape, load_export
from farm_sweep.losses import mixture_nll
from farm_sweep.made import inpaint as made_inpaint
from farm_sweep.made import likelihood as made_likelihood
from farm_sweep.made import sampling as made_sampling
from farm_sweep.made.network import FarmMADE
from farm_sweep.pixelcnn import inpaint as pixelcnn_inpaint
from farm_sweep.pixelcnn import sampling as pixelcnn_sampling
from farm_sweep.pixelcnn import task as pixelcnn_task
from farm_sweep.pixelcnn.farm import FarmPixelCNN
from farm_sweep.pixelcnn.logistic_mixture import to_levels, to_unit
from farm_sweep.pixelcnn.task import FarmPixelCNNWithEma
from farm_sweep.training.config import TrainConfig

Answer = dict[str, np.ndarray]


@dataclass(frozen=True)
class ImageModel:
    """A trained model and the shape of one of its images: (H, W) binary, or (C, H, W) colour."""

    model: FarmMADE | FarmPixelCNN
    shape: tuple[int, ...]

    @property
    def dims(self) -> int:
        return math.prod(self.shape)

    @contextmanager
    def weights(self) -> Iterator[FarmMADE | FarmPixelCNN]:
        """The model with the weights it is evaluated with (a PixelCNN++'s weight average, when it has one)."""
        with self.model.averaged() if isinstance(self.model, FarmPixelCNNWithEma) else nullcontext(self.model):
            yield self.model


def load(folder: Path) -> tuple[ImageModel, TrainConfig]:
    """An export of either format (verified and rebuilt by farm_sweep.export.formats.load_export) and its training
    configuration."""
    model, config, _ = load_export(folder)
    return ImageModel(model, input_shape(folder)), config


def image_model(model: torch.nn.Module, height: int, width: int) -> ImageModel:
    if isinstance(model, FarmMADE):
        return ImageModel(model, (height, width))
    if isinstance(model, FarmPixelCNN):
        return ImageModel(model, (model.config.channels, height, width))
    raise TypeError(f"{type(model).__name__} is not a FARM model this package exports (FarmMADE, FarmPixelCNN)")


def check_images(images: np.ndarray | torch.Tensor, target: ImageModel) -> torch.Tensor:
    """The images as the model takes them: (N, H*W) floats for MADE, (N, C, H, W) uint8 for PixelCNN++.
    ValueError names what is wrong with their shape or values."""
    array = np.asarray(images)
    if array.ndim != len(target.shape) + 1 or tuple(array.shape[1:]) != target.shape or len(array) == 0:
        raise ValueError(f"images: shape {list(array.shape)}; this model takes a batch of one or more images, shape "
                         f"(N, {', '.join(map(str, target.shape))}); reshape them")
    if isinstance(target.model, FarmMADE):
        if not np.isin(array, (0, 1)).all():
            raise ValueError("images: values must be 0 or 1 (binary pixels); convert them")
        return torch.as_tensor(array, dtype=torch.float32).reshape(len(array), -1)
    if not (np.isfinite(array).all() and (array == np.round(array)).all() and array.min() >= 0 and array.max() <= 255):
        raise ValueError("images: values must be whole numbers 0..255 (8-bit levels, not values scaled to [0, 1]); "
                         "convert them")
    return torch.as_tensor(array.astype(np.uint8))


def nll(target: ImageModel, images: np.ndarray | torch.Tensor) -> Answer:
    """Per image: `nll_image`, -log (1/k) sum_i p_i(x) in nats, and `bpd`, the same in bits per dimension."""
    x = check_images(images, target)
    with target.weights() as model:
        family = made_likelihood if isinstance(model, FarmMADE) else pixelcnn_task
        values = mixture_nll(family.dataset_log_probs(model, x))
    return {"nll_image": values.numpy(), "bpd": (values / (target.dims * math.log(2))).numpy()}


def inpaint(target: ImageModel, images: np.ndarray | torch.Tensor, case: str, fill: str, seed: int) -> Answer:
    """Hide one seeded rectangle (occlusion `case`) of every image and sample it back with fill plan `fill`.
    Per image: `images` filled, `hole` (H, W) True where hidden, and the hole's nats given the evidence:
    `nll_hole` conditioned on the sampled earlier hole pixels, `nll_hole_exact` on the true ones."""
    x = check_images(images, target)
    occlusions.check_choice("fill", fill, occlusions.FILLS)
    height, width = target.shape[-2:]
    generator = torch.Generator().manual_seed(seed)
    with target.weights() as model:
        if isinstance(model, FarmMADE):
            hole = occlusions.make_occlusions(case, 1, height, width, seed)[0]
            filled, chain = made_inpaint.inpaint(model, x, hole, fill, generator)
            exact = made_inpaint.nll_exact(model, x, hole, fill)
            filled = filled.view(len(x), height, width)
        else:
            hole = pixelcnn_inpaint.make_occlusions(case, 1, height, width, seed)[0]
            unit = to_unit(x)
            filled, chain = pixelcnn_inpaint.inpaint(model, unit, hole, fill, generator)
            exact = pixelcnn_inpaint.hole_nll_exact(model, unit, hole, fill)
            filled = to_levels(filled)
    holes = hole.view(1, height, width).expand(len(x), height, width)
    return {"images": filled.cpu().numpy(), "hole": holes.numpy(),
            "nll_hole": chain.sum(1).double().cpu().numpy(), "nll_hole_exact": exact.sum(1).double().cpu().numpy()}


def sample(target: ImageModel, num_samples: int, sampler: str, knob: int | None, seed: int) -> Answer:
    """`num_samples` images from `sampler` (the family's SAMPLERS; knob None: its exact default), seeded.
    Per image: `images`, and `network_evaluations` the batch took."""
    if num_samples < 1:
        raise ValueError(f"num_samples: {num_samples}; ask for at least 1 sample")
    generator = torch.Generator().manual_seed(seed)
    height, width = target.shape[-2:]
    with target.weights() as model:
        if isinstance(model, FarmMADE):
            drawn, evaluations = made_sampling.sample(model, sampler, num_samples, knob, generator=generator)
            drawn = drawn.view(num_samples, height, width)
        else:
            drawn, evaluations = pixelcnn_sampling.sample(model, sampler, num_samples, height, width, knob,
                                                          generator=generator)
            drawn = to_levels(drawn)
    return {"images": drawn.cpu().numpy(), "network_evaluations": np.full(num_samples, evaluations)}
