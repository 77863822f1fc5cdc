"""Inference with a trained network: no gradients and evaluation mode (no dropout), the caller's mode
restored afterwards. Every sampler, inpainting routine and likelihood takes the model as first argument and
wears `@inference`, so a model left in training mode still gives exact, deterministic answers."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

Result = TypeVar("Result")


def inference(function: Callable[..., Result]) -> Callable[..., Result]:
    @functools.wraps(function)
    def wrapper(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Result:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return function(model, *args, **kwargs)
        finally:
            model.train(was_training)
    return wrapper
