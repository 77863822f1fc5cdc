"""The export formats, one per model family: write a model in its family's format, load an export of either
(by the `format` its architecture.json names), and what images an export takes.

  farm-made/2       FARM+MADE (farm_sweep.export.format, docs/export_format.md)
  farm-pixelcnn/1   FARM+PixelCNN++ (farm_sweep.export.pixelcnn_format, docs/export_pixelcnn.md)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from farm_sweep.export import format as made_format
from farm_sweep.export import pixelcnn_format
from farm_sweep.export.folder import read_architecture, verify_manifest
from farm_sweep.made.network import FarmMADE
from farm_sweep.pixelcnn.task import FarmPixelCNNWithEma
from farm_sweep.training.config import TrainConfig

FORMATS = {made_format.FORMAT: made_format, pixelcnn_format.FORMAT: pixelcnn_format}
FAMILY_FORMATS = {"made": made_format, "pixelcnn": pixelcnn_format}  # TrainConfig.model -> its format


def export_model(model: torch.nn.Module, config: TrainConfig, metrics: Mapping[str, Any], folder: Path) -> Path:
    """Write one trained model in its family's format."""
    return FAMILY_FORMATS[config.model].export_model(model, config, metrics, folder)


def load_export(folder: Path, device: str = "cpu") -> tuple[FarmMADE | FarmPixelCNNWithEma, TrainConfig,
                                                             dict[str, Any]]:
    """(model in eval mode, its TrainConfig, its metrics.json) of an export of any format, verified as its
    format's `load_export` says; ExportError names the file and the problem."""
    verify_manifest(folder)
    return FORMATS[read_architecture(folder, *FORMATS)["format"]].load_export(folder, device)


def input_shape(folder: Path) -> tuple[int, ...]:
    """The shape of one image the export takes: (D,) binary pixels for FARM+MADE, (C, H, W) uint8 levels for
    FARM+PixelCNN++."""
    verify_manifest(folder)
    architecture = read_architecture(folder, *FORMATS)
    if architecture["format"] == made_format.FORMAT:
        return (architecture["dim"],)
    return architecture["channels"], architecture["height"], architecture["width"]



def model_input(folder: Path, images: Any) -> torch.Tensor:
    """`images` (array-like) as the tensor the export's model takes, checked against `input_shape`: binary
    pixels (N, D) as float32 for FARM+MADE, levels 0..255 (N, C, H, W) as uint8 for FARM+PixelCNN++.
    ValueError says what differs."""
    shape = input_shape(folder)
    tensor = torch.as_tensor(images)
    if tuple(tensor.shape[1:]) != shape or tensor.dim() != len(shape) + 1:
        raise ValueError(f"images: shape {list(tensor.shape)}; the export {folder} takes a batch of shape "
                         f"(N, {', '.join(map(str, shape))}); reshape them")
    top = 1 if len(shape) == 1 else 255
    if tensor.numel() and (not torch.equal(tensor, tensor.round()) or tensor.min() < 0 or tensor.max() > top):
        raise ValueError(f"images: values must be whole numbers 0..{top} (the export models "
                         f"{'binary pixels' if top == 1 else '8-bit levels, not values scaled to [0, 1]'}); "
                         "convert them")
    return tensor.float() if top == 1 else tensor.to(torch.uint8)
