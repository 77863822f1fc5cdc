"""The end-of-trial evaluation: inpainting metrics (DESIGN 4) and the speed-quality curve (DESIGN 5), for
FARM+MADE (farm_sweep.made.inpaint, farm_sweep.made.sampling) and FARM+PixelCNN++ (farm_sweep.pixelcnn.inpaint,
farm_sweep.pixelcnn.sampling).

A study file's `evaluation:` mapping selects what runs; every key is optional:

    evaluation:
      inpaint:                      # null skips inpainting
        cases: [best, average]      # default: all of the model's cases (made: best, average, worst;
                                    #   pixelcnn: best, average, top_half)
        fills: [single, evidence_weighted]
        num_occlusions: 10          # each applied to `images_per_occlusion` images of a seeded subset
        images_per_occlusion: 10
        split: valid                # never choose hyperparameters on test
        seed: 0
        protocol: ours              # or paper: the FARM paper's occlusions and per-occlusion averaging
                                    #   (farm_sweep.occlusions; made only)
      sampling:                     # null skips the speed-quality curve
        num_samples: 100            # the samples each setting's quality is scored on
        timed_samples: 10           # the first of them, the batch each setting is timed on (11 draws each)
        seed: 0

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

from farm_sweep import occlusions
from farm_sweep.data import SPLITS, ImageDataset, load_dataset
from farm_sweep.evaluation.scorers import quality_scorer
from farm_sweep.made import inpaint, sampling
from farm_sweep.made.network import FarmMADE
from farm_sweep.pixelcnn import inpaint as pixelcnn_inpaint
from farm_sweep.pixelcnn import sampling as pixelcnn_sampling
from farm_sweep.pixelcnn.task import FarmPixelCNNWithEma
from farm_sweep.speed_quality import Scorer, write_speed_quality
from farm_sweep.training.config import TrainConfig
from farm_sweep.training.loop import load_split, task_for
from farm_sweep.untrusted import quote

CASES = {"made": occlusions.CASES, "pixelcnn": pixelcnn_inpaint.CASES}  # the inpainting cases of each model
CURVES = {"made": sampling.speed_quality_curve, "pixelcnn": pixelcnn_sampling.speed_quality_curve}
TEST_PREFIX = "test/"  # the metrics evaluate_on_test measures on the test split


def _defaults(cases: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Every setting's default, inpainting all of `cases`."""
    return {"inpaint": {"cases": list(cases), "fills": ["single", "evidence_weighted"], "num_occlusions": 10,
                        "images_per_occlusion": 10, "split": "valid", "seed": 0, "protocol": "ours"},
            "sampling": {"num_samples": 100, "timed_samples": 10, "seed": 0}}


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


def validate_settings(settings: dict[str, Any] | None,
                      model: str | None = None) -> dict[str, dict[str, Any] | None]:
    """Fill in defaults and check every key and value for `model` (None: for any model, as a study file is
    checked before its trials' models are known); a section set to null is skipped (None)."""
    cases = _cases(model)
    choices = {"cases": cases, "fills": occlusions.FILLS}
    scope = f" (model {model})" if model else ""
    settings, all_defaults = settings or {}, _defaults(cases)
    _check_keys("evaluation", settings, all_defaults)
    sections: dict[str, dict[str, Any] | None] = {}
    for name, section_defaults in all_defaults.items():
        given = settings.get(name, {})
        if given is None:
            sections[name] = None
            continue
        if not isinstance(given, dict):
            raise ValueError(f"evaluation.{name}: expected a mapping or null, got {quote(given)}")
        _check_keys(f"evaluation.{name}", given, section_defaults)
        section = section_defaults | given
        for key, value in section.items():
            _check_value(f"evaluation.{name}.{key}", key, value, choices, scope)
        sections[name] = section
    return sections


def largest_batch(settings: dict[str, Any] | None) -> int:
    """The most images the evaluation pushes through the model at once (for the memory estimate)."""
    sections = validate_settings(settings)
    inpaint_section, sampling_section = sections["inpaint"] or {}, sections["sampling"] or {}
    return max(inpaint_section.get("images_per_occlusion", 0), sampling_section.get("num_samples", 0))


def _cases(model: str | None) -> tuple[str, ...]:
    """The inpainting cases of `model`; None: those of every model."""
    if model is None:
        return tuple(dict.fromkeys(case for cases in CASES.values() for case in cases))
    if model not in CASES:
        raise ValueError(f"evaluation: no evaluation for model {model!r}; it exists for {', '.join(CASES)}")
    return CASES[model]


def _check_keys(where: str, given: dict[str, Any], allowed: dict[str, Any]) -> None:
    for key in given:
        if key not in allowed:
            raise ValueError(f"{where}: unknown key {quote(key)}; allowed: {', '.join(allowed)}")


def _check_value(where: str, key: str, value: Any, choices: dict[str, tuple[str, ...]], scope: str) -> None:
    if key in choices:
        allowed = choices[key]
        if not isinstance(value, list | tuple) or not value or any(v not in allowed for v in value):
            raise ValueError(f"{where}: {quote(value)} must be a non-empty list drawn from {', '.join(allowed)}{scope}")
    elif key == "protocol":
        allowed = occlusions.PROTOCOLS if scope in ("", " (model made)") else ("ours",)
        if value not in allowed:
            raise ValueError(f"{where}: {value!r} is not a protocol{scope}; choose one of {', '.join(allowed)}")
    elif key == "split":
        if value not in SPLITS:
            raise ValueError(f"{where}: {quote(value)} is not a split; choose one of {', '.join(SPLITS)}")
    elif key == "seed":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{where}: {quote(value)} must be a non-negative integer")
    elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where}: {quote(value)} must be a positive integer")


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
