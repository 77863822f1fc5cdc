"""The end-of-trial evaluation of both models: metric names, artifacts, and per-model settings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from farm_sweep import quality
from farm_sweep.evaluation.end_of_trial import evaluate_trained_model, validate_settings
from farm_sweep.pixelcnn import sampling as pixelcnn_sampling
from farm_sweep.training.config import TrainConfig
from farm_sweep.training.loop import build_model
from tests.test_quality import cache_tiny_cifar_classifier

ARTIFACTS = ["inpainting.png", "speed_quality.csv", "speed_quality.png"]
CURVE_FIELDS = {"network_evaluations", "wall_seconds", "wall_seconds_min", "wall_seconds_max", "speedup",
                "evaluation_speedup", "classifier_score", "frechet_distance", "threads", "timed_samples"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty classifier cache that the evaluation uses (FARM_CACHE_DIR)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(quality.CACHE_DIR_ENV, str(folder))
    return folder


def metric_names(metrics: dict[str, float], prefix: str) -> set[tuple[str, ...]]:
    """The names under `prefix`, split at "/" after it."""
    return {tuple(name.removeprefix(prefix).split("/")) for name in metrics if name.startswith(prefix)}


def test_made_metrics_and_artifacts(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(quality.TRAINING, "digits", {**quality.TRAINING["digits"], "epochs": 2})
    config = TrainConfig(dataset="digits", hidden_sizes=(16,), num_orderings=2)
    settings = {"inpaint": {"cases": ["best", "worst"], "num_occlusions": 2, "images_per_occlusion": 3},
                "sampling": {"num_samples": 4}}
    metrics, files = evaluate_trained_model(build_model(config, 8, 8), config, tmp_path / "out", settings)
    assert [path.name for path in files] == ARTIFACTS and all(path.is_file() for path in files)
    assert {case for case, *_ in metric_names(metrics, "inpaint/")} == {"best", "worst"}
    assert {(fill, name) for _, fill, name in metric_names(metrics, "inpaint/")} == {
        (fill, name) for fill in ("single", "evidence_weighted")
        for name in ("l2", "nll_chain", "nll_exact", "nll_chain_bits", "nll_exact_bits", "occluded_fraction")}
    assert ("sequential", "1", "classifier_score") in metric_names(metrics, "sampling/")
    assert {field for *_, field in metric_names(metrics, "sampling/")} == CURVE_FIELDS
    assert all(math.isfinite(value) for value in metrics.values())


def test_pixelcnn_metrics_and_artifacts(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny untrained FARM+PixelCNN++ on CIFAR-10, scored by a tiny cached CIFAR classifier; the curve is cut
    to two cheap rows (the full one takes 2,000+ network evaluations)."""
    cache_tiny_cifar_classifier(cache_dir, monkeypatch)
    monkeypatch.setattr(pixelcnn_sampling, "curve_settings", lambda height, width: [("wavefront", 32),
                                                                                    ("fixed_point", 64)])
    config = TrainConfig(model="pixelcnn", dataset="cifar10", ordering_family="paper", num_orderings=2,
                         filters=8, resnets_per_stage=1, stages=3, mixtures=2, dropout=0.0, ema_decay=0.9)
    settings = {"inpaint": {"cases": ["average"], "num_occlusions": 1, "images_per_occlusion": 2,
                            "seed": 148},  # 72-pixel holes (average, and best in the figure): a forward a pixel
                "sampling": {"num_samples": 2}}
    metrics, files = evaluate_trained_model(build_model(config, 32, 32, 3), config, tmp_path / "out", settings)
    assert [path.name for path in files] == ARTIFACTS and all(path.is_file() for path in files)
    assert metric_names(metrics, "inpaint/") == {
        ("average", fill, name) for fill in ("single", "evidence_weighted")
        for name in ("bpd_exact", "bpd_chain", "classifier_score", "occluded_fraction")}
    assert {(sampler, knob) for sampler, knob, _ in metric_names(metrics, "sampling/")} == {
        ("wavefront", "32"), ("fixed_point", "64")}
    assert {field for *_, field in metric_names(metrics, "sampling/")} == CURVE_FIELDS
    assert all(math.isfinite(value) for value in metrics.values())
    assert metrics["sampling/wavefront/32/network_evaluations"] == 63


@pytest.mark.parametrize(("model", "case", "allowed"), [("made", "top_half", "best, average, worst"),
                                                         ("pixelcnn", "worst", "best, average, top_half")])
def test_cases_of_another_model_are_refused(model: str, case: str, allowed: str) -> None:
    with pytest.raises(ValueError, match=f"evaluation.inpaint.cases.*drawn from {allowed} \\(model {model}\\)"):
        validate_settings({"inpaint": {"cases": [case]}}, model)
    assert validate_settings({"inpaint": {"cases": [case]}})["inpaint"]["cases"] == [case]  # some model has it
    assert validate_settings({}, model)["inpaint"]["cases"] == allowed.split(", ")
