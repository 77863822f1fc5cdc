"""The export format `farm-made/2` of FARM+MADE (docs/export_format.md is the reference): write, verify and
load one model.

model.safetensors holds orderings, ranks, and per layer its weight, bias and 0/1 mask; the other files are
every export's (farm_sweep.export.folder). `load_export` verifies every file against the manifest, then
rebuilds the model with build_model and checks every mask and ordering.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from farm_sweep.data import dataset_label
from farm_sweep.export.folder import ExportError, build, check_architecture, image_shape, read_export, write_export
from farm_sweep.made.network import FarmMADE
from farm_sweep.training.config import TrainConfig

FORMAT = "farm-made/2"


def require_made(model: torch.nn.Module, config: TrainConfig) -> None:
    if not isinstance(model, FarmMADE):
        raise ExportError(f"model {config.model!r}: format {FORMAT} holds FARM+MADE models only; a model "
                          f"{config.model!r} has its own format (farm_sweep.export.formats)")


def export_model(model: torch.nn.Module, config: TrainConfig, metrics: Mapping[str, Any], folder: Path) -> Path:
    """Write one model in the export format."""
    require_made(model, config)
    height, width, _ = image_shape(config)
    tensors, architecture = describe(model, height, width)
    return write_export(folder, tensors, architecture, config, metrics, model_card(config, metrics, architecture))


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
    model, config, tensors, metrics = read_export(folder, FORMAT, _rebuild)
    model.load_state_dict(_state_dict(tensors), strict=False)
    return model.to(device).eval(), config, metrics


def _rebuild(path: Path, architecture: dict[str, Any], config: TrainConfig) -> tuple[FarmMADE, dict[str, Any]]:
    """The model config.yaml builds and its tensors; architecture.json must describe exactly that model."""
    model = build(path, architecture, config, "height", "width")
    require_made(model, config)
    expected, described = describe(model, architecture["height"], architecture["width"])
    check_architecture(path, architecture, described)
    return model, expected


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
