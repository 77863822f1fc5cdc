"""The learning rate at each optimizer step, a pure function of the step, so a resumed run continues on the
same schedule with no scheduler state to save.

`constant`: lr throughout. `cosine`: lr * (1 + cos(pi * t)) / 2 with t the fraction of the steps after
warm-up done, annealing to 0 at the last planned epoch. Either way the first `lr_warmup_epochs` ramp the
rate up linearly from lr / warm-up steps (Adam's early updates on wide layers are otherwise large).
"""

from __future__ import annotations

import math

from farm_sweep.training.config import TrainConfig


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The rate for optimizer step `step` (0-based) of a run of config.epochs epochs."""
    warmup = config.lr_warmup_epochs * steps_per_epoch
    if step < warmup:
        return config.lr * (step + 1) / warmup
    if config.lr_schedule == "constant":
        return config.lr
    total = config.epochs * steps_per_epoch - warmup
    done = min(1.0, (step - warmup) / max(total, 1))
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * done))
