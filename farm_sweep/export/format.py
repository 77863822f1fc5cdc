"""The export format `farm-made/2` (docs/export_format.md is the reference): write, verify and load one model.

Each exported model is a folder:
  model.safetensors   orderings, ranks, and per layer its weight, bias and 0/1 mask as tensors
  architecture.json   how the tensors make the model's outputs (enough to recompute them without this package)
  config.yaml         the trial's full TrainConfig
  metrics.json        the trial's validation metrics, ids and parameters
  README.md           a short model card
  manifest.json       the sha256 of each file above, written last
Nothing is pickled; `load_export` verifies every file against the manifest, then rebuilds the model with
build_model and checks every mask and ordering.
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

from farm_sweep.data import dataset_label, load_dataset
from farm_sweep.integrity import file_sha256
from farm_sweep.made.network import FarmMADE
from farm_sweep.training.config import TrainConfig
from farm_sweep.training.loop import build_model
from farm_sweep.untrusted import load_json, load_yaml, quote, read_text

FORMAT = "farm-made/2"
TENSORS, ARCHITECTURE, CONFIG, METRICS, CARD = ("model.safetensors", "architecture.json", "config.yaml",
                                                "metrics.json", "README.md")
FILES = (TENSORS, ARCHITECTURE, CONFIG, METRICS, CARD)  # every file manifest.json lists
MANIFEST = "manifest.json"


REEXPORT = "re-export the model (python -m farm_sweep.export)"


class ExportError(ValueError):
    """Nothing to export, or an export folder that does not match its description."""


def require_made(model: torch.nn.Module, config: TrainConfig) -> None:
    if not isinstance(model, FarmMADE):
        raise ExportError(f"model {config.model!r}: the export format covers FARM+MADE models only; export "
                          "studies of model made")


def export_model(model: torch.nn.Module, config: TrainConfig, metrics: Mapping[str, Any], folder: Path) -> Path:
    """Write one model in the export format."""
    require_made(model, config)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, architecture = describe(model, *_image_shape(config))
    save_file(tensors, folder / TENSORS)
    (folder / ARCHITECTURE).write_text(json.dumps(architecture, indent=2))
    (folder / CONFIG).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    (folder / METRICS).write_text(json.dumps(dict(metrics), indent=2))
    (folder / CARD).write_text(model_card(config, metrics, architecture))
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
    manifest = _read(folder / MANIFEST, _json)
    if not isinstance(manifest, dict) or sorted(manifest) != sorted(FILES):
        raise ExportError(f"{folder / MANIFEST}: must map exactly {', '.join(FILES)} to their sha256; {REEXPORT}")
    for name, digest in manifest.items():
        if _read(folder / name, file_sha256) != digest:
            raise ExportError(f"{folder / name}: sha256 does not match {MANIFEST}: the file was altered or "
                              f"corrupted after export; {REEXPORT}")


def describe(model: FarmMADE, height: int, width: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model's tensors under documented names, and the JSON that says how to use them."""
    masks_by_set = [_masks(model, m) for m in range(model.num_masks)]
    tensors = {"orderings": model.orders, "ranks": model.ranks}
    layers = []
    for index, (weight, bias) in enumerate(zip(model.weights, model.biases)):
        last = index == len(model.weights) - 1
        tensors[f"layer{index}.weight"] = weight.detach()
        tensors[f"layer{index}.bias"] = bias.detach()[:, 0, :]
        tensors[f"layer{index}.mask"] = torch.stack([masks[index] for masks in masks_by_set]).to(torch.uint8)
        code = f"layer{index}.code" if model.codes and not last else None
        if code:
            tensors[code] = model.codes[index].detach()[:, 0, :]
        layers.append({"weight": f"layer{index}.weight", "bias": f"layer{index}.bias", "mask": f"layer{index}.mask",
                       "sets": weight.shape[0], "mask_per_ordering": index in (0, len(model.weights) - 1),
                       "code": code, "activation": "none" if last else "relu"})
    direct = None
    if model.direct is not None:
        tensors["direct.weight"] = model.direct.detach()
        tensors["direct.mask"] = model.direct_masks.to(torch.uint8)
        direct = {"weight": "direct.weight", "mask": "direct.mask", "sets": model.direct.shape[0]}
    architecture = {
        "format": FORMAT, "model": "made", "height": height, "width": width, "dim": model.dim,
        "num_orderings": model.k, "weight_sharing": model.weight_sharing, "num_masks": model.num_masks,
        "hidden_sizes": model.hidden_sizes, "layers": layers, "direct": direct, "output": "bernoulli_logits",
        "likelihood": "log p_i(x) = sum_d log Bernoulli(x_d; sigmoid(logit_i,d)); p_i averages its mask sets; "
                      "the model is the mixture (1/k) sum_i p_i(x)"}
    return {name: t.contiguous().cpu() for name, t in tensors.items()}, architecture


def _state_dict(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's parameters from the export's tensors (masks, orderings and ranks are rebuilt, not read)."""
    state = {}
    for name, tensor in tensors.items():
        layer, _, kind = name.partition(".")
        index = layer.removeprefix("layer")
        if kind == "weight" and layer != "direct":
            state[f"weights.{index}"] = tensor
        elif kind in ("bias", "code"):
            state[f"{'biases' if kind == 'bias' else 'codes'}.{index}"] = tensor[:, None, :]
        elif name == "direct.weight":
            state["direct"] = tensor
    return state


def _masks(model: FarmMADE, mask_set: int) -> list[torch.Tensor]:
    with model.using_mask(mask_set):
        return model.masks()


def load_export(folder: Path, device: str = "cpu") -> tuple[FarmMADE, TrainConfig, dict[str, Any]]:
    """Rebuild an exported model (build_model + its tensors). Every file must be present, match
    manifest.json's sha256 and be readable, architecture.json and every tensor's name, shape and dtype must
    be what config.yaml builds, masks and orderings equal, weights finite; otherwise ExportError names the
    file and the problem."""
    verify_manifest(folder)
    architecture = _read(folder / ARCHITECTURE, _json)
    if not isinstance(architecture, dict) or architecture.get("format") != FORMAT:
        found = architecture.get("format") if isinstance(architecture, dict) else architecture
        raise ExportError(f"{folder / ARCHITECTURE}: format {quote(found)}, expected {FORMAT!r}; {REEXPORT}")
    config = _read(folder / CONFIG, lambda path: TrainConfig.from_dict(load_yaml(read_text(path))))
    model, expected = _rebuild(folder / ARCHITECTURE, architecture, config)
    tensors = _read(folder / TENSORS, load_file)
    _check_tensors(folder / TENSORS, tensors, expected)
    model.load_state_dict(_state_dict(tensors), strict=False)
    return model.to(device).eval(), config, _read(folder / METRICS, _json)


def _json(path: Path) -> Any:
    return load_json(path)


def _read(path: Path, parse: Callable[[Path], Any]) -> Any:
    """`parse(path)`; any failure to read or parse it is an ExportError naming the file."""
    try:
        return parse(path)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, yaml.YAMLError, SafetensorError) as error:
        raise ExportError(f"{path}: unreadable or invalid ({type(error).__name__}: {error}); {REEXPORT}") from None


def _rebuild(path: Path, architecture: dict[str, Any], config: TrainConfig) -> tuple[FarmMADE, dict[str, Any]]:
    """The model config.yaml builds and its tensors; architecture.json must describe exactly that model."""
    try:
        model = build_model(config, architecture["height"], architecture["width"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ExportError(f"{path}: does not fit the model config.yaml builds ({type(error).__name__}: {error}); "
                          f"{REEXPORT}") from None
    require_made(model, config)
    expected, described = describe(model, architecture["height"], architecture["width"])
    differing = [key for key, value in json.loads(json.dumps(described)).items() if architecture.get(key) != value]
    if differing:
        raise ExportError(f"{path}: {', '.join(differing)} differ(s) from the model config.yaml builds; {REEXPORT}")
    return model, expected


def _check_tensors(path: Path, tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """Names, shapes and dtypes as expected; orderings, ranks and masks equal; weights and biases finite."""
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


def model_card(config: TrainConfig, metrics: Mapping[str, Any], architecture: Mapping[str, Any]) -> str:
    params = {k.removeprefix("param."): v for k, v in metrics.items() if k.startswith("param.")}
    return f"""# FARM+MADE, study {metrics['study']}, trial {metrics['trial_id']} (rank {metrics['rank']})

- **Model**: MADE over k={architecture['num_orderings']} pixel orderings ({config.ordering_family}), hidden sizes
  {list(config.hidden_sizes)}, {config.weight_sharing} weights, {config.num_masks} mask set(s).
- **Data**: {dataset_label(config.dataset)} ({architecture['height']}x{architecture['width']} binary images).
- **Training**: loss {config.loss}, divergence {config.divergence} (weight {config.divergence_weight}),
  lr {config.lr}, batch {config.batch_size}, {metrics.get('epochs')} epochs, seed {config.seed}.
- **Sampled parameters**: {json.dumps(params)}
- **Validation nll_image**: {metrics.get('nll_image')} nats per image (the metric the study minimized; test metrics:
  `python -m farm_sweep.evaluate <this folder>`).
- **Files**: `model.safetensors` + `architecture.json` describe the network completely (docs/export_format.md has
  a NumPy reference); `config.yaml` is the training configuration; `metrics.json` the trial's metrics;
  `manifest.json` the sha256 of every file.
- **Limitations**: a research model of binary images; likelihoods are in nats per image; not for any decision
  about people.
"""


def _image_shape(config: TrainConfig) -> tuple[int, int]:
    data = load_dataset(config.dataset, "valid", config.data_dir, binarize=config.binarize, seed=config.seed,
                        verify=False)
    return data.height, data.width
