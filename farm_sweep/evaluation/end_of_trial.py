"""The end-of-trial evaluation: inpainting metrics (DESIGN 4) and the speed-quality curve (DESIGN 5), for
FARM+MADE (farm_sweep.made.inpaint, farm_sweep.made.sampling) and FARM+PixelCNN++ (farm_sweep.pixelcnn.inpaint,
farm_sweep.pixelcnn.sampling).

A study file's `evaluation:` section selects what runs (farm_sweep.evaluation.settings declares it).

Metrics are named `inpaint/<case>/<fill>/<metric>` (made: l2, nll_chain, nll_exact and their *_bits; pixelcnn:
bpd_exact, the teacher-forced bits/dim of the hole, bpd_chain, the same along the fill's own samples, and
classifier_score of the inpainted images; both: occluded_fraction) and `sampling/<sampler>/<knob>/<field>`
(farm_sweep.speed_quality.CURVE_FIELDS: network_evaluations, wall_seconds with wall_seconds_min and _max,
speedup, evaluation_speedup, classifier_score, frechet_distance, threads and timed_samples; timed by
farm_sweep.timing's method, a speedup the two runs disagree on is left out; pixelcnn samples are scored by the
CIFAR-10 classifier, samples of your own data by a classifier of its labels, and without labels the two quality
metrics are left out, with a warning).
Artifacts: inpainting.png, speed_quality.csv, speed_quality.png. A PixelCNN++ with a weight average is
evaluated with its averaged weights, as its validation is.

A study's confirmation stage evaluates each of its models with `evaluate_on_test`: the whole-image likelihood on
the test split, and the same settings with inpainting on the test split, named `test/nll_image` and
`test/inpaint/...`.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from farm_sweep.data import ImageDataset, load_dataset
from farm_sweep.evaluation.scorers import quality_scorer
from farm_sweep.evaluation.settings import validate_settings
from farm_sweep.made import inpaint, sampling
from farm_sweep.made.network import FarmMADE
from farm_sweep.pixelcnn import inpaint as pixelcnn_inpaint
from farm_sweep.pixelcnn import sampling as pixelcnn_sampling
from farm_sweep.pixelcnn.task import FarmPixelCNNWithEma
from farm_sweep.speed_quality import Scorer, write_speed_quality
from farm_sweep.training.config import TrainConfig
from farm_sweep.training.loop import load_split, task_for

CURVES = {"made": sampling.speed_quality_curve, "pixelcnn": pixelcnn_sampling.speed_quality_curve}
TEST_PREFIX = "test/"  # the metrics evaluate_on_test measures on the test split


def evaluate_trained_model(model: FarmMADE | FarmPixelCNNWithEma, config: TrainConfig, out_dir: Path,
                           settings: dict[str, Any]) -> tuple[dict[str, float], list[Path]]:
    """Evaluate a trained model as `settings` asks; returns (metrics, artifact paths written in out_dir)."""
    sections = validate_settings(settings, config.model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    metrics: dict[str, float] = {}
    artifacts: list[Path] = []
    with model.averaged() if isinstance(model, FarmPixelCNNWithEma) else nullcontext():
        if sections["inpaint"] is not None:
            found, figure = _inpaint(model, config, out_dir, sections["inpaint"])
            metrics |= found
            artifacts.append(figure)
        if sections["sampling"] is not None:
            found, written = _sampling(model, config, out_dir, sections["sampling"])
            metrics |= found
            artifacts += written
    return metrics, artifacts


def evaluate_on_test(model: FarmMADE | FarmPixelCNNWithEma, config: TrainConfig, out_dir: Path,
                     settings: dict[str, Any]) -> tuple[dict[str, float], list[Path]]:
    """The confirmation stage's evaluation: the whole-image likelihood on the test split (test/nll_image, ...)
    and, when `settings` (a study's evaluation section) is not empty, that evaluation with its inpainting on the
    test split (test/inpaint/...; the speed-quality curve keeps its sampling/ names)."""
    test = load_split(config, "test")
    likelihood = task_for(config).evaluate(model.eval(), test.images)
    metrics = {TEST_PREFIX + name: value for name, value in likelihood.items()}
    if not settings:
        return metrics, []
    found, files = evaluate_trained_model(model, config, out_dir, _on_test_split(settings))
    return metrics | {TEST_PREFIX + name if name.startswith("inpaint/") else name: value
                      for name, value in found.items()}, files


def _on_test_split(settings: dict[str, Any]) -> dict[str, Any]:
    section = settings.get("inpaint", {})
    return settings if section is None else {**settings, "inpaint": {**section, "split": "test"}}


def _eval_split(config: TrainConfig, split: str) -> ImageDataset:
    """A split of the trial's dataset (dynamically binarized MNIST is evaluated on static bits)."""
    binarize = "static" if config.binarize == "dynamic" else config.binarize
    return load_dataset(config.dataset, split, config.data_dir, binarize=binarize, seed=config.seed)


def _seeded_order(images: torch.Tensor, seed: int) -> torch.Tensor:
    """The images in a seeded random order (a prefix of a split is not a fair sample, DESIGN 4)."""
    return images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))]


def _inpaint(model: FarmMADE | FarmPixelCNNWithEma, config: TrainConfig, out_dir: Path,
             section: dict[str, Any]) -> tuple[dict[str, float], Path]:
    data = _eval_split(config, section["split"])
    if config.model == "made":
        return _inpaint_made(model, data, out_dir / "inpainting.png", section)
    scorer = quality_scorer(config.dataset, config.data_dir)
    return _inpaint_pixelcnn(model, data, out_dir / "inpainting.png", section, scorer)


def _inpaint_made(model: FarmMADE, data: ImageDataset, figure: Path,
                  section: dict[str, Any]) -> tuple[dict[str, float], Path]:
    images = data.images.to(next(model.parameters()).device)
    metrics = {}
    for case in section["cases"]:
        for fill in section["fills"]:
            found = inpaint.evaluate_inpainting(model, images, data.height, data.width, case, fill,
                                                section["num_occlusions"], section["images_per_occlusion"],
                                                section["seed"], section["protocol"])
            metrics |= {f"inpaint/{case}/{fill}/{name}": value for name, value in found.items()}
    shown = _seeded_order(images, section["seed"])
    return metrics, inpaint.inpainting_figure(model, shown, data.height, data.width, figure, seed=section["seed"])


def _inpaint_pixelcnn(model: FarmPixelCNNWithEma, data: ImageDataset, figure: Path, section: dict[str, Any],
                      scorer: Scorer) -> tuple[dict[str, float], Path]:
    """Metrics `<fill>/bpd_exact`, `<fill>/bpd_chain`, `<fill>/classifier_score` (left out when `scorer` has no
    classifier: NaN) and `occluded_fraction` per case, renamed to the MADE scheme."""
    images = _seeded_order(data.images, section["seed"])
    metrics = {}
    for case in section["cases"]:
        found = pixelcnn_inpaint.evaluate_inpainting(model, images, case, tuple(section["fills"]),
                                                     section["num_occlusions"], section["images_per_occlusion"],
                                                     section["seed"], scorer)
        for fill in section["fills"]:
            named = {name: value for name, value in found.items() if name.startswith(f"{fill}/")}
            metrics |= {f"inpaint/{case}/{name}": value for name, value in named.items() if not math.isnan(value)}
            metrics[f"inpaint/{case}/{fill}/occluded_fraction"] = found["occluded_fraction"]
    return metrics, pixelcnn_inpaint.inpainting_figure(model, images, figure, seed=section["seed"])


def _sampling(model: FarmMADE | FarmPixelCNNWithEma, config: TrainConfig, out_dir: Path,
              section: dict[str, Any]) -> tuple[dict[str, float], list[Path]]:
    scorer = quality_scorer(config.dataset, config.data_dir)
    rows = CURVES[config.model](model, scorer.height, scorer.width, scorer, section["num_samples"],
                                section["seed"], timed_samples=min(section["timed_samples"], section["num_samples"]))
    metrics = {f"sampling/{row['sampler']}/{row['knob']}/{field}": float(value)
               for row in rows for field, value in row.items()
               if field not in ("sampler", "knob") and not math.isnan(value)}  # NaN: not scored
    return metrics, write_speed_quality(rows, out_dir)
