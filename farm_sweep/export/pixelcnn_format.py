"""The export format `farm-pixelcnn/1` of FARM+PixelCNN++ (docs/export_pixelcnn.md is the reference): write,
verify and load one model.

model.safetensors holds `ranks` and, for every convolution of every network (one network when the weights
are shared, one per ordering when separate), its weight-norm direction `weight_v`, gain `weight_g`, `bias`
and, for anti-diagonally masked layers, its 0/1 `mask`, named `net<n>.<layer>.<part>`; architecture.json the
hyperparameters, each layer's operation and the orderings as image transforms. The weights are those the
trial's evaluation used: its weight average when it kept one (ema_decay > 0), else its trained weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from farm_sweep.data import dataset_label
from farm_sweep.export.folder import ExportError, build, check_architecture, image_shape, read_export, write_export
from farm_sweep.orderings import SYMMETRIES
from farm_sweep.pixelcnn.farm import TRANSFORM_NAMES
from farm_sweep.pixelcnn.network import AntidiagonalConv2d, DownRightShiftedConv2d, DownShiftedConv2d, ShiftedDeconv2d
from farm_sweep.pixelcnn.task import FarmPixelCNNWithEma
from farm_sweep.training.config import TrainConfig

FORMAT = "farm-pixelcnn/1"
SEMANTICS = {
    "input": "uint8 levels v of every channel, scaled to x = v / 127.5 - 1; the network also reads a channel of ones",
    "output": "discretized_logistic_mixture",
    "likelihood": "log p_i(x) = sum over the pixels of T_i x of log p(pixel | params of net_i(T_i x) at the pixel); "
                  "the model is the mixture (1/k) sum_i p_i(x)"}
Layer = tuple[nn.Module, dict[str, Any], torch.Tensor | None]  # the weight-normed convolution, its spec, its mask


def require_pixelcnn(model: nn.Module, config: TrainConfig) -> None:
    if not isinstance(model, FarmPixelCNNWithEma):
        raise ExportError(f"model {config.model!r}: format {FORMAT} holds FARM+PixelCNN++ models only; a model "
                          f"{config.model!r} has its own format (farm_sweep.export.formats)")


def export_model(model: nn.Module, config: TrainConfig, metrics: Mapping[str, Any], folder: Path) -> Path:
    """Write one model in the format, with the weights its evaluation uses (the average, if it keeps one)."""
    require_pixelcnn(model, config)
    height, width, _ = image_shape(config)
    with model.averaged():
        tensors, architecture = describe(model, height, width, config.ema_decay)
    return write_export(folder, tensors, architecture, config, metrics, model_card(config, metrics, architecture))


def describe(model: FarmPixelCNNWithEma, height: int, width: int,
             ema_decay: float) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Copies of the model's tensors under the format's names, and the JSON that says how to use them."""
    tensors = {"ranks": model.ranks(height, width)}
    for name, tensor in _named_tensors(model).items():
        tensors[name] = tensor.to(torch.uint8) if name.endswith(".mask") else tensor.detach()
    config = model.config
    architecture = {
        "format": FORMAT, "model": "pixelcnn", "height": height, "width": width, "channels": config.channels,
        "dim": config.channels * height * width, "causal": config.causal, "filters": config.filters,
        "resnets_per_stage": config.resnets_per_stage, "stages": config.stages, "mixtures": config.mixtures,
        "weight_sharing": model.weight_sharing, "num_networks": len(model.nets), "num_orderings": model.k,
        "orderings": [_ordering(model, position) for position in range(model.k)],
        "weights": "ema" if ema_decay > 0 else "trained", "ema_decay": ema_decay,
        "layers": {name: spec for name, (_, spec, _) in _layers(model.nets[0]).items()}, **SEMANTICS}
    # copies: the weights may be the average, swapped in only while the model is `averaged()`
    return {name: tensor.cpu().clone().contiguous() for name, tensor in tensors.items()}, architecture


def _ordering(model: FarmPixelCNNWithEma, position: int) -> dict[str, Any]:
    index = model.transforms[position]
    transpose, flip_rows, flip_cols = SYMMETRIES[index]
    network = position if model.weight_sharing == "separate" else 0
    return {"transform": TRANSFORM_NAMES[index], "index": index, "flip_rows": flip_rows, "flip_cols": flip_cols,
            "transpose": transpose, "network": f"net{network}"}


def _named_tensors(model: FarmPixelCNNWithEma) -> dict[str, torch.Tensor]:
    """The live parameters (and masks) of every layer of every network, under the format's names."""
    named = {}
    for index, net in enumerate(model.nets):
        for layer, (conv, _, mask) in _layers(net).items():
            weight = conv.parametrizations.weight
            prefix = f"net{index}.{layer}"
            named |= {f"{prefix}.weight_g": weight.original0, f"{prefix}.weight_v": weight.original1,
                      f"{prefix}.bias": conv.bias}
            if mask is not None:
                named[f"{prefix}.mask"] = mask
    return named


def _layers(net: nn.Module) -> dict[str, Layer]:
    """Every convolution of one network by its module path: the shifted and masked layers (whose inner
    convolution is theirs) and the plain 1x1 (`nin`) and transposed ones."""
    found: dict[str, Layer] = {}
    for name, module in net.named_modules():
        if name.rpartition(".")[0] in found:  # the convolution inside a layer already listed, or its parts
            continue
        if isinstance(module, DownShiftedConv2d | DownRightShiftedConv2d):
            found[name] = (module.conv, _conv_spec(module.conv, module.pad, module.conv.stride[0], False), None)
        elif isinstance(module, AntidiagonalConv2d):
            found[name] = (module.conv, _conv_spec(module.conv, (module.padding,) * 4, module.stride, True),
                           module.mask)
        elif isinstance(module, ShiftedDeconv2d):
            found[name] = (module.deconv, _deconv_spec(module.deconv, module.crop), None)
        elif isinstance(module, nn.Conv2d):
            found[name] = (module, _conv_spec(module, (0, 0, 0, 0), module.stride[0], False), None)
        elif isinstance(module, nn.ConvTranspose2d):
            found[name] = (module, _deconv_spec(module, (0, 0, 0, 0)), None)
    return found


def _conv_spec(conv: nn.Conv2d, pad: tuple[int, ...], stride: int, masked: bool) -> dict[str, Any]:
    return {"op": "conv", "in": conv.in_channels, "out": conv.out_channels, "kernel": list(conv.kernel_size),
            "stride": stride, "pad": list(pad), "mask": masked, "norm_dim": conv.parametrizations.weight[0].dim}


def _deconv_spec(deconv: nn.ConvTranspose2d, crop: tuple[int, ...]) -> dict[str, Any]:
    return {"op": "deconv", "in": deconv.in_channels, "out": deconv.out_channels,
            "kernel": list(deconv.kernel_size), "stride": deconv.stride[0],
            "output_padding": deconv.output_padding[0], "crop": list(crop), "mask": False,
            "norm_dim": deconv.parametrizations.weight[0].dim}


def load_export(folder: Path, device: str = "cpu") -> tuple[FarmPixelCNNWithEma, TrainConfig, dict[str, Any]]:
    """Rebuild an exported model (build_model + its tensors), holding the exported weights and no separate
    average. Every file must be present, match manifest.json's sha256 and be readable, architecture.json and
    every tensor's name, shape and dtype must be what config.yaml builds, ranks and masks equal, weights
    finite; otherwise ExportError names the file and the problem."""
    model, config, tensors, metrics = read_export(folder, FORMAT, _rebuild)
    with torch.no_grad():
        for name, target in _named_tensors(model).items():
            if target.is_floating_point():
                target.copy_(tensors[name])
    return model.to(device).eval(), config, metrics


def _rebuild(path: Path, architecture: dict[str, Any],
             config: TrainConfig) -> tuple[FarmPixelCNNWithEma, dict[str, torch.Tensor]]:
    """The model config.yaml builds (without a weight average: the export holds the weights to use) and its
    tensors; architecture.json must describe exactly that model."""
    model = build(path, architecture, dataclasses.replace(config, ema_decay=0.0), "height", "width", "channels")
    require_pixelcnn(model, config)
    expected, described = describe(model, architecture["height"], architecture["width"], config.ema_decay)
    check_architecture(path, architecture, described)
    return model, expected


def model_card(config: TrainConfig, metrics: Mapping[str, Any], architecture: Mapping[str, Any]) -> str:
    params = {k.removeprefix("param."): v for k, v in metrics.items() if k.startswith("param.")}
    transforms = ", ".join(ordering["transform"] for ordering in architecture["orderings"])
    nll = metrics.get("nll_image")
    bpd = nll / (architecture["dim"] * math.log(2)) if isinstance(nll, int | float) else None
    weights = (f"the weight average (ema_decay {config.ema_decay})" if architecture["weights"] == "ema"
               else "the trained weights (no weight average)")
    return f"""# FARM+PixelCNN++, study {metrics['study']}, trial {metrics['trial_id']} (rank {metrics['rank']})

- **Model**: PixelCNN++ ({config.causal} causal variant; {config.filters} filters, {config.resnets_per_stage}
  resnet(s) per stage, {config.stages} stages, {config.mixtures} logistic mixture components) over
  k={architecture['num_orderings']} orderings as image transforms ({transforms}), {config.weight_sharing} weights;
  exported: {weights}.
- **Data**: {dataset_label(config.dataset)} ({architecture['height']}x{architecture['width']} images, \
{architecture['channels']} channel(s) of 256 levels).
- **Training**: loss {config.loss}, divergence {config.divergence} (weight {config.divergence_weight}),
  lr {config.lr}, batch {config.batch_size}, {metrics.get('epochs')} epochs, seed {config.seed}.
- **Sampled parameters**: {json.dumps(params)}
- **Validation nll_image**: {nll} nats per image, {bpd} bits/dim (the metric the study minimized; test metrics:
  `python -m farm_sweep.evaluate <this folder>`).
- **Files**: `model.safetensors` + `architecture.json` describe the network completely (docs/export_pixelcnn.md
  has a reference in plain PyTorch functions); `config.yaml` is the training configuration; `metrics.json` the
  trial's metrics; `manifest.json` the sha256 of every file.
- **Limitations**: a research model of small colour images; likelihoods are in nats per image and bits per
  dimension; not for any decision about people.
"""
