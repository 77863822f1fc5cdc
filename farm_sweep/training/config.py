"""The configuration of one training run: every choice a trial makes, validated field by field."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from farm_sweep.data import DATASETS, DataError, DatasetSpec, dataset_label
from farm_sweep.losses import DIVERGENCES, LOSSES
from farm_sweep.made.network import WEIGHT_SHARING
from farm_sweep.orderings import FAMILIES, SYMMETRIES, max_orderings
from farm_sweep.pixelcnn.farm import TRANSFORM_FAMILIES, same_conditionings, transform_indices
from farm_sweep.pixelcnn.network import CAUSAL, PixelCNNConfig
from farm_sweep.untrusted import quote

MODELS = ("made", "pixelcnn")
COLOUR_DATASETS = ("cifar10",)  # the 3-channel datasets PixelCNN++ models


LR_SCHEDULES = ("constant", "cosine")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field, the value and the fix."""


@dataclass(frozen=True)
class EarlyStopping:
    """Stop once validation nll_image has not improved by more than `min_delta` for `patience` epochs; the
    run then keeps its best epoch's weights."""

    patience: int
    min_delta: float = 0.0

    @classmethod
    def from_value(cls, value: Any) -> EarlyStopping | None:
        if value is None or isinstance(value, EarlyStopping):
            return value
        if not isinstance(value, dict) or not set(value) <= {"patience", "min_delta"} or "patience" not in value:
            raise ConfigError("early_stopping: must be null or a mapping {patience: N, min_delta: D} "
                              "(patience required, min_delta default 0)")
        patience, min_delta = value["patience"], value.get("min_delta", 0.0)
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
            raise ConfigError(f"early_stopping.patience: {quote(patience)} must be an integer >= 1 (epochs "
                              "without improvement before stopping)")
        if (isinstance(min_delta, bool) or not isinstance(min_delta, int | float) or not math.isfinite(min_delta)
                or min_delta < 0):
            raise ConfigError(f"early_stopping.min_delta: {quote(min_delta)} must be a finite number >= 0 "
                              "(nats an epoch must gain to count as an improvement)")
        return cls(patience, float(min_delta))


@dataclass(frozen=True)
class TrainConfig:
    dataset: str | DatasetSpec = "digits"  # a name, or your own data (a spec's mapping is read into a spec)
    data_dir: str | None = None
    binarize: str = "static"
    max_train_examples: int | None = None
    model: str = "made"
    hidden_sizes: tuple[int, ...] = (500,)
    num_orderings: int = 1
    ordering_family: str = "raster"
    weight_sharing: str = "shared"
    direct_connections: bool = False
    num_masks: int = 1
    loss: str = "ensemble"
    resample_every: int = 20
    divergence: str = "none"
    divergence_weight: float = 0.0
    # PixelCNN++ only; defaults are the paper's CIFAR-10 model, as PixelCNNConfig's
    filters: int = PixelCNNConfig.filters
    resnets_per_stage: int = PixelCNNConfig.resnets_per_stage
    stages: int = PixelCNNConfig.stages
    mixtures: int = PixelCNNConfig.mixtures
    dropout: float | None = None  # None: the model's own default (PixelCNN++ 0.5, MADE 0)
    causal: str = PixelCNNConfig.causal
    ema_decay: float = 0.0
    lr: float = 1e-3
    lr_schedule: str = "constant"
    lr_warmup_epochs: int = 0
    batch_size: int = 100
    epochs: int = 10
    early_stopping: EarlyStopping | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "early_stopping", EarlyStopping.from_value(self.early_stopping))
        object.__setattr__(self, "dataset", _dataset(self.dataset))
        self._check_types()
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "divergence_weight", float(self.divergence_weight))
        object.__setattr__(self, "dropout", None if self.dropout is None else float(self.dropout))
        object.__setattr__(self, "ema_decay", float(self.ema_decay))
        self._check_choices()
        self._check_ranges()

    def _check_types(self) -> None:
        hints = typing.get_type_hints(type(self))
        for name, hint in hints.items():
            value = getattr(self, name)
            if not _matches(value, hint):
                raise ConfigError(f"{name}: {quote(value)} has type {type(value).__name__}, expected {hint}")

    def _check_choices(self) -> None:
        families = TRANSFORM_FAMILIES if self.model == "pixelcnn" else FAMILIES
        choices = [("model", MODELS), ("ordering_family", families), ("weight_sharing", WEIGHT_SHARING),
                   ("loss", LOSSES), ("causal", CAUSAL), ("divergence", DIVERGENCES),
                   ("binarize", ("static", "dynamic", "threshold")), ("lr_schedule", LR_SCHEDULES),
                   ("device", ("auto", "cpu", "cuda"))]
        if isinstance(self.dataset, str):
            choices.insert(0, ("dataset", DATASETS))
        for name, allowed in choices:
            value = getattr(self, name)
            if value not in allowed:
                scope = f" for model {self.model}" if name == "ordering_family" else ""
                more = ", or your own data: a mapping {format: npz, path: ...} (docs/data.md)"
                more = more if name == "dataset" else ""
                raise ConfigError(f"{name}: {quote(value)} is not allowed{scope}; choose one of "
                                  f"{', '.join(allowed)}{more}")
        if self.binarize != "static" and self.dataset != "mnist":
            raise ConfigError(f"binarize: {quote(self.binarize)} applies to dataset mnist only "
                              f"({dataset_label(self.dataset)!r} is already binary or colour); leave binarize at "
                              "'static'")
        if self.model == "pixelcnn" and (self.direct_connections or self.weight_sharing not in ("shared", "separate")):
            raise ConfigError(f"weight_sharing: {self.weight_sharing!r} / direct_connections: "
                              f"{self.direct_connections} are MADE options; model pixelcnn takes weight_sharing "
                              "shared or separate and no direct connections")
        if self.weight_sharing == "shared_hidden" and len(self.hidden_sizes) < 2:
            raise ConfigError(f"weight_sharing: 'shared_hidden' shares the hidden-to-hidden layers, and "
                              f"hidden_sizes {list(self.hidden_sizes)} has none (it would be 'separate'); give "
                              "two or more hidden sizes, or choose separate")
        if self.model == "pixelcnn" and not self._colour():
            raise ConfigError(f"dataset: {dataset_label(self.dataset)!r} is not a colour dataset; model pixelcnn "
                              f"models 8-bit RGB images: choose {', '.join(COLOUR_DATASETS)} or a spec with "
                              "channels: 3 (or model made)")
        if self.model == "pixelcnn" and self.num_orderings > len(SYMMETRIES):
            raise ConfigError(f"num_orderings: {self.num_orderings} is more than the {len(SYMMETRIES)} symmetry "
                              f"transforms model pixelcnn orders by; use at most 8")
        if self.model == "pixelcnn" and self.num_orderings <= len(SYMMETRIES):
            same = same_conditionings(transform_indices(self.num_orderings, self.ordering_family), self.causal)
            if same:
                raise ConfigError(f"num_orderings: {self.num_orderings} {self.ordering_family} transforms with causal "
                                  f"{self.causal!r} repeat {len(same)} ordering(s) (an anti-diagonal ordering "
                                  "depends only on row + column); use fewer orderings (paper family: at most 4) "
                                  "or causal raster")
        limit = None if self.model == "pixelcnn" else max_orderings(self.ordering_family)
        if limit is not None and self.num_orderings > limit:
            raise ConfigError(f"num_orderings: {self.num_orderings} is more than ordering_family "
                              f"{self.ordering_family!r} offers ({limit}); use at most {limit} or the "
                              f"'random' family")

    def _colour(self) -> bool:
        if isinstance(self.dataset, DatasetSpec):
            return self.dataset.channels == 3
        return self.dataset in COLOUR_DATASETS

    def _check_ranges(self) -> None:
        for name in ("lr", "divergence_weight", "dropout", "ema_decay"):
            if getattr(self, name) is not None and not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name}: {getattr(self, name)} must be a finite number, not infinity or NaN")
        positive = ("num_orderings", "num_masks", "resample_every", "batch_size", "epochs", "lr", "filters",
                    "resnets_per_stage", "stages", "mixtures")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: {quote(getattr(self, name))} must be positive")
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ConfigError(f"hidden_sizes: {quote(list(self.hidden_sizes))} must be one or more positive sizes")
        if self.divergence_weight < 0:
            raise ConfigError(f"divergence_weight: {self.divergence_weight} must be >= 0 (it weighs a "
                              f"divergence added to the loss)")
        for name in ("dropout", "ema_decay"):
            if getattr(self, name) is not None and not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}: {getattr(self, name)} must be in [0, 1)")
        if not 0 <= self.lr_warmup_epochs <= self.epochs:
            raise ConfigError(f"lr_warmup_epochs: {self.lr_warmup_epochs} must be in 0..epochs ({self.epochs})")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            raise ConfigError(f"max_train_examples: {self.max_train_examples} must be positive or null")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from plain values (a study's fixed and sampled parameters); unknown keys are errors."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"expected a mapping of field names to values, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(name) for name in set(values) - known)
        if unknown:
            raise ConfigError(f"unknown parameter(s) {quote(', '.join(unknown))}; known: {', '.join(sorted(known))}")
        try:
            return cls(**values)
        except TypeError as error:
            raise ConfigError(str(error)) from error

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["hidden_sizes"] = list(self.hidden_sizes)
        if isinstance(self.dataset, DatasetSpec):
            values["dataset"] = self.dataset.to_dict()
        return values  # asdict turns early_stopping into its mapping, as from_dict reads it


def _dataset(value: Any) -> Any:
    """A dataset spec's mapping read into a DatasetSpec (a relative path starts at the working directory)."""
    if not isinstance(value, dict):
        return value
    try:
        return DatasetSpec.from_value(value)
    except DataError as error:
        raise ConfigError(f"dataset: {error}") from None


def _matches(value: Any, hint: Any) -> bool:
    """isinstance for the few annotations TrainConfig uses (bool is never a number here)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin is tuple:
        return isinstance(value, list | tuple) and all(_matches(v, args[0]) for v in value)
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint)
