"""The configuration of one training run: every choice a trial makes, declared as a pydantic dataclass.

`TrainConfigSchema` declares the fields (types, bounds, descriptions: the JSON Schema of a study's `fixed` and
its search space's parameters is built from them) and the rules that span fields; `TrainConfig` is the class
the project builds, which raises ConfigError (`FIELD: reason; fix`, farm_sweep.declared) for a value that
cannot work.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    Strict,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic.dataclasses import dataclass

from farm_sweep.data import DATASETS, SPEC_FIELDS, DataError, DatasetSpec, dataset_label
from farm_sweep.declared import STRICT, number, problem, rule
from farm_sweep.losses import DIVERGENCES, LOSSES
from farm_sweep.made.network import WEIGHT_SHARING
from farm_sweep.orderings import FAMILIES, SYMMETRIES, max_orderings
from farm_sweep.pixelcnn.farm import TRANSFORM_FAMILIES, same_conditionings, transform_indices
from farm_sweep.pixelcnn.network import CAUSAL, PixelCNNConfig
from farm_sweep.untrusted import quote

MODELS = ("made", "pixelcnn")
COLOUR_DATASETS = ("cifar10",)  # the 3-channel datasets PixelCNN++ models
LR_SCHEDULES = ("constant", "cosine")
MAX_SEED = 2**32 - 1  # NumPy's (and so Optuna's) seed range


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field, the value and the fix."""


class EarlyStopping(BaseModel):
    """Stop once validation nll_image has not improved by more than `min_delta` for `patience` epochs; the
    run then keeps its best epoch's weights."""

    model_config = STRICT | ConfigDict(frozen=True)

    patience: Annotated[int, Field(ge=1, description="epochs without improvement before stopping")]
    min_delta: Annotated[number(ge=0.0), Field(description="nats an epoch must gain to count as an improvement")] = 0.0

    @model_validator(mode="before")
    @classmethod
    def _patience_given(cls, value: Any) -> Any:
        if isinstance(value, dict) and "patience" not in value:
            raise rule("", "a mapping {patience: N, min_delta: D} (patience required, min_delta default 0), or null; "
                       "add patience")
        return value


def _dataset(value: Any, info: ValidationInfo) -> str | DatasetSpec:
    """A dataset's name, or your own data: a spec's mapping read into a DatasetSpec, its path relative to the
    validation context's `folder` (the file that holds it) or else the working directory."""
    if isinstance(value, DatasetSpec) or (isinstance(value, str) and value in DATASETS):
        return value
    if not isinstance(value, dict):
        raise rule("", f"{quote(value)} is not allowed; choose one of {', '.join(DATASETS)}, or your own data: a "
                   "mapping {format: npz, path: ...} (docs/data.md)")
    try:
        return DatasetSpec.from_value(value, (info.context or {}).get("folder"))
    except DataError as error:
        raise rule("", str(error)) from None


def _plain_dataset(value: str | DatasetSpec) -> str | dict[str, Any]:
    return value.to_dict() if isinstance(value, DatasetSpec) else value


_DATASET_JSON = {"anyOf": [{"enum": list(DATASETS)}, {  # the keys only: DatasetSpec.from_value checks the values
    "type": "object", "properties": {key: {} for key in SPEC_FIELDS}, "required": ["path", "shape"],
    "additionalProperties": False}]}
Dataset = Annotated[str | DatasetSpec, PlainValidator(_dataset), PlainSerializer(_plain_dataset),
                    WithJsonSchema(_DATASET_JSON)]
Positive = Annotated[int, Field(gt=0)]
Fraction = number(ge=0.0, lt=1.0)


@dataclass(frozen=True, config=STRICT)
class TrainConfigSchema:
    """A training run's configuration: the fields and their rules (docs/studies.md, *Training parameters*)."""

    dataset: Annotated[Dataset, Field(description="a dataset name, or your own data: a spec {format: npz, path, "
                                                  "shape, ...} (docs/data.md)")] = "digits"
    data_dir: Annotated[str | None, Field(description="the data folder (default: FARM_DATA_DIR, else ./data)")] = None
    binarize: Annotated[Literal["static", "dynamic", "threshold"],
                        Field(description="how mnist's grey levels become bits")] = "static"
    max_train_examples: Annotated[Positive | None, Field(description="train on the first N examples only")] = None
    model: Annotated[Literal[*MODELS], Field(description="the model family")] = "made"
    hidden_sizes: Annotated[tuple[Positive, ...], Strict(False), Field(min_length=1, description="MADE's hidden "
                                                                       "layer sizes")] = (500,)
    num_orderings: Annotated[Positive, Field(description="k, the orderings the model is trained over")] = 1
    ordering_family: Annotated[Literal[*dict.fromkeys(FAMILIES + TRANSFORM_FAMILIES)],
                               Field(description="the orderings' family (pixelcnn: paper or symmetries)")] = "raster"
    weight_sharing: Annotated[Literal[*WEIGHT_SHARING], Field(description="how the k orderings share weights "
                                                                          "(pixelcnn: shared or separate)")] = "shared"
    direct_connections: Annotated[bool, Field(description="MADE's direct input-to-output connections")] = False
    num_masks: Annotated[Positive, Field(description="MADE's hidden-degree sets (connectivity-agnostic "
                                                     "training)")] = 1
    loss: Annotated[Literal[*LOSSES], Field(description="the FARM objective (mc, ensemble)")] = "ensemble"
    resample_every: Annotated[Positive, Field(description="minibatches between ordering or mask changes")] = 20
    divergence: Annotated[Literal[*DIVERGENCES], Field(description="the divergence between orderings' "
                                                                   "conditionals added to the loss")] = "none"
    divergence_weight: Annotated[number(ge=0.0), Field(description="λ, the divergence's weight")] = 0.0
    # PixelCNN++ only; defaults are the paper's CIFAR-10 model, as PixelCNNConfig's
    filters: Annotated[Positive, Field(description="PixelCNN++ filters")] = PixelCNNConfig.filters
    resnets_per_stage: Annotated[Positive, Field(description="PixelCNN++ residual blocks per stage"
                                                 )] = PixelCNNConfig.resnets_per_stage
    stages: Annotated[Positive, Field(description="PixelCNN++ stages (resolutions)")] = PixelCNNConfig.stages
    mixtures: Annotated[Positive, Field(description="PixelCNN++ logistic mixture components"
                                        )] = PixelCNNConfig.mixtures
    dropout: Annotated[Fraction | None, Field(description="dropout rate in [0, 1) (null: the model's default, "
                                                          "PixelCNN++ 0.5, MADE 0)")] = None
    causal: Annotated[Literal[*CAUSAL], Field(description="PixelCNN++'s causal order on the "
                                                          "grid")] = PixelCNNConfig.causal
    ema_decay: Annotated[Fraction, Field(description="PixelCNN++ weight average's decay in [0, 1) (0: "
                                                     "none)")] = 0.0
    lr: Annotated[number(gt=0.0), Field(description="Adam's learning rate")] = 1e-3
    lr_schedule: Annotated[Literal[*LR_SCHEDULES], Field(description="the learning rate over the "
                                                                     "epochs")] = "constant"
    lr_warmup_epochs: Annotated[int, Field(ge=0, description="epochs of linear warm-up, at most "
                                                             "epochs")] = 0
    batch_size: Annotated[Positive, Field(description="examples per minibatch")] = 100
    epochs: Annotated[Positive, Field(description="epochs to train (the pruners' maximum step)")] = 10
    early_stopping: Annotated[EarlyStopping | None, Field(description="stop when validation stops improving "
                                                                      "(null: never)")] = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED, description="the seed of initialization, data order and "
                                                              "random orderings")] = 0
    device: Annotated[Literal["auto", "cpu", "cuda"], Field(description="auto: the GPU when there is one, "
                                                                        "else the CPU")] = "auto"

    @model_validator(mode="after")
    def _rules(self) -> TrainConfigSchema:
        """The rules that span fields: each names the field to change."""
        families = TRANSFORM_FAMILIES if self.model == "pixelcnn" else FAMILIES
        if self.ordering_family not in families:
            raise rule("ordering_family", f"{quote(self.ordering_family)} is not allowed for model {self.model}; "
                       f"choose one of {', '.join(families)}")
        if self.binarize != "static" and self.dataset != "mnist":
            raise rule("binarize", f"{quote(self.binarize)} applies to dataset mnist only "
                       f"({dataset_label(self.dataset)!r} is already binary or colour); leave binarize at 'static'")
        if self.model == "pixelcnn":
            self._pixelcnn_rules()
        elif self.num_orderings > (limit := max_orderings(self.ordering_family) or self.num_orderings):
            raise rule("num_orderings", f"{self.num_orderings} is more than ordering_family {self.ordering_family!r} "
                       f"offers ({limit}); use at most {limit} or the 'random' family")
        if self.weight_sharing == "shared_hidden" and len(self.hidden_sizes) < 2:
            raise rule("weight_sharing", f"'shared_hidden' shares the hidden-to-hidden layers, and hidden_sizes "
                       f"{list(self.hidden_sizes)} has none (it would be 'separate'); give two or more hidden sizes, "
                       "or choose separate")
        if self.lr_warmup_epochs > self.epochs:
            raise rule("lr_warmup_epochs", f"{self.lr_warmup_epochs} must be in 0..epochs ({self.epochs})")
        return self

    def _pixelcnn_rules(self) -> None:
        if self.direct_connections or self.weight_sharing not in ("shared", "separate"):
            raise rule("weight_sharing", f"{self.weight_sharing!r} / direct_connections: {self.direct_connections} "
                       "are MADE options; model pixelcnn takes weight_sharing shared or separate and no direct "
                       "connections")
        spec = isinstance(self.dataset, DatasetSpec)
        if not (self.dataset.channels == 3 if spec else self.dataset in COLOUR_DATASETS):
            raise rule("dataset", f"{dataset_label(self.dataset)!r} is not a colour dataset; model pixelcnn models "
                       f"8-bit RGB images: choose {', '.join(COLOUR_DATASETS)} or a spec with channels: 3 (or model "
                       "made)")
        if self.num_orderings > len(SYMMETRIES):
            raise rule("num_orderings", f"{self.num_orderings} is more than the {len(SYMMETRIES)} symmetry transforms "
                       "model pixelcnn orders by; use at most 8")
        if same_conditionings(transform_indices(self.num_orderings, self.ordering_family), self.causal):
            raise rule("num_orderings", f"{self.num_orderings} {self.ordering_family} transforms with causal "
                       f"{self.causal!r} repeat orderings (an anti-diagonal ordering depends only on row + column); "
                       "use fewer orderings (paper family: at most 4) or causal raster")


class TrainConfig(TrainConfigSchema):
    """A training run's configuration (fields: TrainConfigSchema); a value that cannot work raises ConfigError."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise config_error(error) from None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from plain values (a study's fixed and sampled parameters); unknown keys are errors."""
        if not isinstance(values, dict):
            raise ConfigError(f"expected a mapping of field names to values, got {type(values).__name__}")
        return cls(**{str(name): value for name, value in values.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, mappings) that from_dict reads back."""
        return self.__pydantic_serializer__.to_python(self, mode="json")


def config_error(error: ValidationError) -> ConfigError:
    """A ValidationError of TrainConfigSchema as the ConfigError `FIELD: reason; fix`."""
    field, reason = problem(error, TrainConfigSchema)
    return ConfigError(f"{field}: {reason}" if field else reason)

