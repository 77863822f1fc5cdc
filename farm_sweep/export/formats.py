"""The export formats, one per model family: write a model in its family's format, load an export of either
(by the `format` its architecture.json names), and the shape of the images an export takes.

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
    """The shape of one image the export takes (farm_sweep.export.predict): (H, W) binary pixels for FARM+MADE,
    (C, H, W) uint8 levels for FARM+PixelCNN++."""
    verify_manifest(folder)
    architecture = read_architecture(folder, *FORMATS)
    if architecture["format"] == made_format.FORMAT:
        return architecture["height"], architecture["width"]
    return architecture["channels"], architecture["height"], architecture["width"]
