"""An export folder, whatever its format: its files, their manifest, and reading them with errors that name
the file.

Every exported model is a folder:
  model.safetensors   the network's tensors under the format's names
  architecture.json   how the tensors make the model's outputs (enough to recompute them without this package)
  config.yaml         the trial's full TrainConfig
  metrics.json        the trial's validation metrics, ids and parameters
  README.md           a short model card
  manifest.json       the sha256 of each file above, written last
Nothing is pickled. The formats (farm_sweep.export.format for FARM+MADE, farm_sweep.export.pixelcnn_format for
FARM+PixelCNN++) say what the tensors and architecture.json hold.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from farm_sweep.data import load_dataset
from farm_sweep.integrity import file_sha256
from farm_sweep.training.config import TrainConfig
from farm_sweep.training.loop import build_model
from farm_sweep.untrusted import load_json, load_yaml, quote, read_text

TENSORS, ARCHITECTURE, CONFIG, METRICS, CARD = ("model.safetensors", "architecture.json", "config.yaml",
                                                "metrics.json", "README.md")
FILES = (TENSORS, ARCHITECTURE, CONFIG, METRICS, CARD)  # every file manifest.json lists
MANIFEST = "manifest.json"


REEXPORT = "re-export the model (python -m farm_sweep.export)"


class ExportError(ValueError):
    """Nothing to export, or an export folder that does not match its description."""


def write_export(folder: Path, tensors: Mapping[str, torch.Tensor], architecture: Mapping[str, Any],
                 config: TrainConfig, metrics: Mapping[str, Any], card: str) -> Path:
    """Write every file of an export, the manifest last."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(dict(tensors), folder / TENSORS)
    (folder / ARCHITECTURE).write_text(json.dumps(architecture, indent=2))
    (folder / CONFIG).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    (folder / METRICS).write_text(json.dumps(dict(metrics), indent=2))
    (folder / CARD).write_text(card)
    write_manifest(folder)
    return folder


def write_manifest(folder: Path) -> Path:
    """manifest.json: file name -> sha256 of every file of the export; written last and renamed into place,
    so an export that stopped halfway (even while writing the manifest) has none."""
    path, staging = folder / MANIFEST, folder / f".{MANIFEST}.tmp"
    try:
        staging.write_text(json.dumps({name: file_sha256(folder / name) for name in FILES}, indent=2) + "\n")
    except OSError:
        staging.unlink(missing_ok=True)
        raise
    os.replace(staging, path)
    return path


def verify_manifest(folder: Path) -> None:
    """Every file of the export and manifest.json are present, and each file has the sha256 the manifest
    records; otherwise ExportError names the file."""
    missing = [name for name in (*FILES, MANIFEST) if not (folder / name).is_file()]
    if missing:
        raise ExportError(f"{folder}: {', '.join(missing)} missing; not a complete export: {REEXPORT}")
    manifest = read_file(folder / MANIFEST, load_json)
    if not isinstance(manifest, dict) or sorted(manifest) != sorted(FILES):
        raise ExportError(f"{folder / MANIFEST}: must map exactly {', '.join(FILES)} to their sha256; {REEXPORT}")
    for name, digest in manifest.items():
        if read_file(folder / name, file_sha256) != digest:
            raise ExportError(f"{folder / name}: sha256 does not match {MANIFEST}: the file was altered or "
                              f"corrupted after export; {REEXPORT}")


def read_file(path: Path, parse: Callable[[Path], Any]) -> Any:
    """`parse(path)`; any failure to read or parse it is an ExportError naming the file."""
    try:
        return parse(path)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, yaml.YAMLError, SafetensorError) as error:
        raise ExportError(f"{path}: unreadable or invalid ({type(error).__name__}: {error}); {REEXPORT}") from None


def read_architecture(folder: Path, *formats: str) -> dict[str, Any]:
    """architecture.json, whose `format` must be one of `formats`."""
    architecture = read_file(folder / ARCHITECTURE, load_json)
    if not isinstance(architecture, dict) or architecture.get("format") not in formats:
        found = architecture.get("format") if isinstance(architecture, dict) else architecture
        expected = " or ".join(repr(name) for name in formats)
        raise ExportError(f"{folder / ARCHITECTURE}: format {quote(found)}, expected {expected}; {REEXPORT}")
    return architecture


def read_export(folder: Path, format_name: str,
                rebuild: Callable[[Path, dict[str, Any], TrainConfig], tuple[torch.nn.Module, dict[str, torch.Tensor]]]
                ) -> tuple[torch.nn.Module, TrainConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """(model, config, tensors, metrics) of an export in `format_name`, every file verified against the
    manifest. `rebuild(path, architecture, config)` gives the model config.yaml builds and the tensors it
    expects (checking that architecture.json describes it); the tensors read must match those in name,
    shape and dtype, integer tensors in value. The caller loads the tensors into the model."""
    verify_manifest(folder)
    architecture = read_architecture(folder, format_name)
    config = read_file(folder / CONFIG, lambda path: TrainConfig.from_dict(load_yaml(read_text(path))))
    model, expected = rebuild(folder / ARCHITECTURE, architecture, config)
    tensors = read_file(folder / TENSORS, load_file)
    check_tensors(folder / TENSORS, tensors, expected)
    return model, config, tensors, read_file(folder / METRICS, load_json)


def build(path: Path, architecture: Mapping[str, Any], config: TrainConfig, *shape_keys: str) -> torch.nn.Module:
    """build_model(config, *architecture's `shape_keys`); ExportError when it cannot."""
    try:
        return build_model(config, *(architecture[key] for key in shape_keys))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ExportError(f"{path}: does not fit the model config.yaml builds ({type(error).__name__}: {error}); "
                          f"{REEXPORT}") from None


def check_tensors(path: Path, tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """Names, shapes and dtypes as expected; integer tensors (orderings, ranks, masks) equal; floating ones
    finite."""
    names = sorted(set(tensors) ^ set(expected))
    if names:
        raise ExportError(f"{path}: tensor(s) {', '.join(names)} missing or unexpected; {REEXPORT}")
    for name, want in expected.items():
        have = tensors[name]
        if have.shape != want.shape or have.dtype != want.dtype:
            raise ExportError(f"{path}: {name} is {have.dtype} {list(have.shape)}, the model its config builds "
                              f"needs {want.dtype} {list(want.shape)}; {REEXPORT}")
        if have.is_floating_point() and not torch.isfinite(have).all():
            raise ExportError(f"{path}: {name} holds NaN or infinite values; {REEXPORT}")
        if not have.is_floating_point() and not torch.equal(have, want):
            raise ExportError(f"{path}: {name} differs from the model its config builds; {REEXPORT}")


def check_architecture(path: Path, architecture: Mapping[str, Any], described: Mapping[str, Any]) -> None:
    """architecture.json must describe exactly the model its config builds (`described`)."""
    differing = [key for key, value in json.loads(json.dumps(described)).items() if architecture.get(key) != value]
    if differing:
        raise ExportError(f"{path}: {', '.join(differing)} differ(s) from the model config.yaml builds; {REEXPORT}")


def image_shape(config: TrainConfig) -> tuple[int, int, int]:
    """(height, width, channels) of the configuration's images."""
    data = load_dataset(config.dataset, "valid", config.data_dir, binarize=config.binarize, seed=config.seed,
                        verify=False)
    return data.height, data.width, data.channels
