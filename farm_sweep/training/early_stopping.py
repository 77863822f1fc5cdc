"""Early stopping on validation nll_image: which epoch is best, and whether to stop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from farm_sweep.training.config import EarlyStopping

MONITOR = "nll_image"  # validation nats per image, lower is better


def best_epoch(history: Sequence[dict[str, Any]], min_delta: float = 0.0) -> int:
    """The epoch (1-based) of the best validation value, where a later epoch counts as better only if it
    improves on the best so far by more than `min_delta`."""
    best, best_value = 1, history[0][MONITOR]
    for epoch, metrics in enumerate(history[1:], start=2):
        if metrics[MONITOR] < best_value - min_delta:
            best, best_value = epoch, metrics[MONITOR]
    return best


def should_stop(history: Sequence[dict[str, Any]], rule: EarlyStopping | None) -> bool:
    """True once `rule.patience` epochs have passed without an improvement."""
    return rule is not None and len(history) - best_epoch(history, rule.min_delta) >= rule.patience
