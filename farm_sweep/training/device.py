"""Which device a run trains on, and why: `device: cuda` demands a usable CUDA GPU, `cpu` is the CPU, and `auto`
(the default) takes the GPU when this process can use one, else the CPU with the reason in one line. The
reason is logged (a warning when the process was handed a GPU it cannot use: `CUDA_VISIBLE_DEVICES` names
one, as Ray sets it for a trial that asked for `resources.gpus`), and a sweep records it on the trial's run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from farm_sweep.training.config import ConfigError

VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    fallback_reason: str = ""  # why `auto` trains on the CPU; "" when it did not fall back


def choose_device(requested: str) -> DeviceChoice:
    """The device `requested` (auto, cpu, cuda) means in this process; ConfigError for cuda without CUDA."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but no CUDA GPU is visible; use device: auto or cpu")
    if requested != "auto":
        return DeviceChoice(torch.device(requested))
    if torch.cuda.is_available():
        return DeviceChoice(torch.device("cuda"))
    return DeviceChoice(torch.device("cpu"), _cpu_reason())


def resolve_device(requested: str) -> torch.device:
    """choose_device's device, logging why `auto` fell back to the CPU."""
    choice = choose_device(requested)
    if choice.fallback_reason:
        log.log(logging.WARNING if gpu_assigned() else logging.INFO, choice.fallback_reason)
    return choice.device


def visible_devices() -> str:
    """CUDA_VISIBLE_DEVICES as this process sees it ("unset" when it is not set)."""
    return os.environ.get(VISIBLE_DEVICES, "unset")


def gpu_assigned() -> bool:
    """Whether CUDA_VISIBLE_DEVICES names a GPU for this process (Ray sets it for a trial given GPUs)."""
    return os.environ.get(VISIBLE_DEVICES, "").strip() not in ("", "-1")


def _cpu_reason() -> str:
    if torch.version.cuda is None:
        why = f"this torch ({torch.__version__}) is built without CUDA"
    elif gpu_assigned():
        why = "no CUDA driver or device answers for the GPU it names"
    else:
        why = "no CUDA GPU is visible"
    return f"device auto: training on the CPU, as {why} ({VISIBLE_DEVICES}={visible_devices()})"
