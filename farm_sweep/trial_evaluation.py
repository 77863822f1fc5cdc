"""The end-of-trial evaluation: inpainting metrics (DESIGN 4) and the speed-quality curve (DESIGN 5).

A study file's `evaluation:` mapping selects what runs; every key is optional:

    evaluation:
      inpaint:                      # null skips inpainting
        cases: [best, average, worst]
        fills: [single, evidence_weighted]
        num_occlusions: 10          # each applied to `images_per_occlusion` images of a seeded subset
        images_per_occlusion: 10
        split: valid                # never choose hyperparameters on test
        seed: 0
      sampling:                     # null skips the speed-quality curve
        num_samples: 100
        seed: 0

Metrics are named `inpaint/<case>/<fill>/<metric>` (metric: l2, nll_chain, nll_exact and their *_bits)
and `sampling/<sampler>/<knob>/<field>` (network_evaluations, wall_seconds, speedup,
classifier_score, frechet_distance). Artifacts: inpainting.png, speed_quality.csv, speed_quality.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from farm_sweep.config import TrainConfig
from farm_sweep.data import SPLITS, ImageDataset, load_dataset
from farm_sweep.inpaint import CASES, FILLS, evaluate_inpainting, inpainting_figure
from farm_sweep.models.made import FarmMADE
from farm_sweep.quality import QualityScorer
from farm_sweep.sampling import speed_quality_curve, write_speed_quality

DEFAULTS: dict[str, dict[str, Any]] = {
    "inpaint": {"cases": list(CASES), "fills": ["single", "evidence_weighted"], "num_occlusions": 10,
                "images_per_occlusion": 10, "split": "valid", "seed": 0},
    "sampling": {"num_samples": 100, "seed": 0},
}
_CHOICES = {"cases": CASES, "fills": FILLS}


def evaluate_trained_model(model: FarmMADE, config: TrainConfig, out_dir: Path,
                           settings: dict[str, Any]) -> tuple[dict[str, float], list[Path]]:
    """Evaluate a trained model as `settings` asks; returns (metrics, artifact paths written in out_dir)."""
    sections = validate_settings(settings)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    metrics: dict[str, float] = {}
    artifacts: list[Path] = []
    if sections["inpaint"] is not None:
        found, figure = _inpaint(model, config, out_dir, sections["inpaint"])
        metrics |= found
        artifacts.append(figure)
    if sections["sampling"] is not None:
        found, written = _sampling(model, config, out_dir, sections["sampling"])
        metrics |= found
        artifacts += written
    return metrics, artifacts


def validate_settings(settings: dict[str, Any] | None) -> dict[str, dict[str, Any] | None]:
    """Fill in defaults and check every key and value; a section set to null is skipped (None)."""
    settings = settings or {}
    _check_keys("evaluation", settings, DEFAULTS)
    sections: dict[str, dict[str, Any] | None] = {}
    for name, defaults in DEFAULTS.items():
        given = settings.get(name, {})
        if given is None:
            sections[name] = None
            continue
        if not isinstance(given, dict):
            raise ValueError(f"evaluation.{name}: expected a mapping or null, got {given!r}")
        _check_keys(f"evaluation.{name}", given, defaults)
        section = defaults | given
        for key, value in section.items():
            _check_value(f"evaluation.{name}.{key}", key, value)
        sections[name] = section
    return sections


def _check_keys(where: str, given: dict[str, Any], allowed: dict[str, Any]) -> None:
    for key in given:
        if key not in allowed:
            raise ValueError(f"{where}: unknown key {key!r}; allowed: {', '.join(allowed)}")


def _check_value(where: str, key: str, value: Any) -> None:
    if key in _CHOICES:
        allowed = _CHOICES[key]
        if not isinstance(value, list | tuple) or not value or any(v not in allowed for v in value):
            raise ValueError(f"{where}: {value!r} must be a non-empty list drawn from {', '.join(allowed)}")
    elif key == "split":
        if value not in SPLITS:
            raise ValueError(f"{where}: {value!r} is not a split; choose one of {', '.join(SPLITS)}")
    elif key == "seed":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{where}: {value!r} must be a non-negative integer")
    elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where}: {value!r} must be a positive integer")


def _eval_split(config: TrainConfig, split: str) -> ImageDataset:
    """A binary split of the trial's dataset (dynamically binarized MNIST is evaluated on static bits)."""
    binarize = "static" if config.binarize == "dynamic" else config.binarize
    return load_dataset(config.dataset, split, config.data_dir, binarize=binarize, seed=config.seed)


def _inpaint(model: FarmMADE, config: TrainConfig, out_dir: Path,
             section: dict[str, Any]) -> tuple[dict[str, float], Path]:
    data = _eval_split(config, section["split"])
    device = next(model.parameters()).device
    images = data.images.to(device)
    metrics = {}
    for case in section["cases"]:
        for fill in section["fills"]:
            found = evaluate_inpainting(model, images, data.height, data.width, case, fill,
                                        section["num_occlusions"], section["images_per_occlusion"],
                                        section["seed"])
            metrics |= {f"inpaint/{case}/{fill}/{name}": value for name, value in found.items()}
    shown = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(section["seed"]))[:25]]
    figure = inpainting_figure(model, shown, data.height, data.width, out_dir / "inpainting.png",
                               seed=section["seed"])
    return metrics, figure


def _sampling(model: FarmMADE, config: TrainConfig, out_dir: Path,
              section: dict[str, Any]) -> tuple[dict[str, float], list[Path]]:
    scorer = QualityScorer.for_dataset(config.dataset, config.data_dir)
    rows = speed_quality_curve(model, scorer.height, scorer.width, scorer, section["num_samples"],
                               section["seed"])
    metrics = {f"sampling/{row['sampler']}/{row['knob']}/{field}": float(value)
               for row in rows for field, value in row.items() if field not in ("sampler", "knob")}
    return metrics, write_speed_quality(rows, out_dir)
