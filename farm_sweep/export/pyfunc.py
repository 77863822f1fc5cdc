"""An export as an MLflow Model: the `python_function` flavor, its data the export folder itself (safetensors and
JSON, nothing pickled), its code this module of the installed farm-sweep package (MLflow's `loader_module`: the
MLmodel file names `farm_sweep.export.pyfunc`, and loading imports it and calls `_load_pyfunc`).

    model = mlflow.pyfunc.load_model("models:/farm-<study>@champion")
    model.predict(images)                                     # {"nll_image": (N,), "bpd": (N,)}
    model.predict(images, {"task": "inpaint", "case": "average", "fill": "evidence_weighted", "seed": 0})
    model.predict(images[:1], {"task": "sample", "num_samples": 16, "sampler": "fixed_point"})

Images and answers are farm_sweep.export.predict's. The signature records the image shape and every parameter
with its default (PARAMS); `knob` 0 means the sampler's exact default.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo

from farm_sweep.data import load_dataset
from farm_sweep.export import predict
from farm_sweep.export.folder import ExportError
from farm_sweep.training.config import TrainConfig
from farm_sweep.untrusted import quote

TASKS = ("nll", "inpaint", "sample")
PARAMS = {"task": "nll", "case": "average", "fill": "evidence_weighted", "seed": 0, "num_samples": 16,
          "sampler": "sequential", "knob": 0}
EXAMPLE_IMAGES = 2


def _load_pyfunc(data_path: str) -> FarmPyfunc:
    """MLflow's entry point: the model in the export folder MLflow keeps as the MLflow Model's data (either format:
    farm_sweep.export.predict.load)."""
    return FarmPyfunc(predict.load(Path(data_path))[0])


class FarmPyfunc:
    """What `mlflow.pyfunc.load_model(...).predict(images, params)` calls."""

    def __init__(self, target: predict.ImageModel) -> None:
        self.target = target

    def predict(self, model_input: Any, params: Mapping[str, Any] | None = None) -> predict.Answer:
        settings = {**PARAMS, **(params or {})}
        unknown = sorted(set(settings) - set(PARAMS))
        if unknown:
            raise ValueError(f"params: unknown {', '.join(unknown)}; known: {', '.join(PARAMS)}")
        task = settings["task"]
        if task == "nll":
            return predict.nll(self.target, model_input)
        if task == "inpaint":
            return predict.inpaint(self.target, model_input, settings["case"], settings["fill"], settings["seed"])
        if task == "sample":
            return predict.sample(self.target, settings["num_samples"], settings["sampler"], settings["knob"] or None,
                                  settings["seed"])
        raise ValueError(f"params: task {quote(task)} is not one of {', '.join(TASKS)}")


def log_model(folder: Path, model_id: str) -> ModelInfo:
    """Write the export as the MLflow Model of Logged Model `model_id` (MLflow's current tracking URI), with its
    signature, two test images as its input example and the requirements of the installed package."""
    target, config = predict.load(folder)
    images = example_images(target, config)
    return mlflow.pyfunc.log_model(
        name=folder.name, loader_module=__name__, data_path=str(folder), model_id=model_id,
        signature=infer_signature(images, params=PARAMS), input_example=(images, {"task": "nll"}),
        pip_requirements=requirements())


def example_images(target: predict.ImageModel, config: TrainConfig) -> np.ndarray:
    """The first test images of the model's dataset, as the model's predict takes them."""
    test = load_dataset(config.dataset, "test", config.data_dir, binarize=config.binarize, seed=config.seed)
    images = test.images[:EXAMPLE_IMAGES].reshape(-1, *target.shape)
    return images.numpy() if images.dtype == torch.uint8 else images.float().numpy()


def requirements() -> list[str]:
    """farm-sweep (whose code the model runs) and the libraries it calls, at the versions installed here."""
    try:
        return [f"{name}=={metadata.version(name)}" for name in ("farm-sweep", "mlflow", "torch", "safetensors")]
    except metadata.PackageNotFoundError as error:
        raise ExportError(f"{error.name} is not installed, so the MLflow Model cannot name its requirements; install "
                          "the project (pip install -e .) and export again") from None
