"""Bring your own data: a dataset spec through the configuration, a study (real Ray, Optuna and MLflow), the
end-of-trial evaluation, an export, the train command and Table 1, on images of 10 x 12 pixels (not 28 x 28)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import yaml
from mlflow import MlflowClient

from farm_sweep import quality
from farm_sweep.data import DatasetSpec
from farm_sweep.evaluation import table1
from farm_sweep.evaluation.end_of_trial import evaluate_trained_model
from farm_sweep.export import command, evaluate
from farm_sweep.export.folder import ARCHITECTURE, CARD, CONFIG
from farm_sweep.export.format import load_export
from farm_sweep.integrity import file_sha256
from farm_sweep.sweep import tables, tracking
from farm_sweep.sweep.runner import run_study
from farm_sweep.sweep.study import StudyError, load_study
from farm_sweep.training import loop, preflight
from farm_sweep.training.config import ConfigError, TrainConfig
from tests.processes import local_ray

HEIGHT, WIDTH = 10, 12
LABELS = {"train": "train_labels", "valid": "valid_labels", "test": "test_labels"}
SIZES = {"train": 200, "valid": 60, "test": 60}


def bars(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Binary 10x12 images of class c in 0..2: rows 3c..3c+2 lit, 5% of pixels flipped."""
    labels = rng.integers(0, 3, n)
    images = rng.random((n, HEIGHT, WIDTH)) < 0.05
    for image, label in zip(images, labels):
        image[3 * label:3 * label + 3] ^= True
    return images.astype(np.uint8), labels


def write_bars(path: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in SIZES.items():
        arrays[f"{split}_data"], arrays[f"{split}_labels"] = bars(n, rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def spec(path: str = "data/bars.npz", **fields: Any) -> dict[str, Any]:
    return {"format": "npz", "path": path, "shape": [HEIGHT, WIDTH], "labels": LABELS, **fields}


@pytest.fixture
def own_npz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """data/bars.npz in the test's folder, which is the working directory; an empty classifier cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(quality.CACHE_DIR_ENV, str(tmp_path / "cache"))
    return write_bars(tmp_path / "data" / "bars.npz")


# ------------------------------------------------------------------ configuration and study files


def test_train_config_carries_the_spec_through_its_plain_values(own_npz: Path) -> None:
    config = TrainConfig.from_dict({"dataset": spec(), "hidden_sizes": [16]})
    assert isinstance(config.dataset, DatasetSpec) and config.dataset.path == str(own_npz)
    assert hash(config) == hash(TrainConfig.from_dict(config.to_dict()))
    assert TrainConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ConfigError, match=r"^dataset: shape: \[10\] must be the images' \[height, width\]"):
        TrainConfig.from_dict({"dataset": spec(shape=[10])})
    with pytest.raises(ConfigError, match=r"^dataset: 'imagenet' is not allowed; choose one of digits.*your own"):
        TrainConfig(dataset="imagenet")


def test_a_study_reads_spec_paths_from_the_folder_of_the_file_that_holds_them(
        own_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "space.yaml").write_text(yaml.safe_dump({"parameters": {
        "dataset": {"distribution": "categorical", "choices": ["digits", spec("../data/bars.npz")]}}}))
    (tmp_path / "studies").mkdir()
    study_file = tmp_path / "studies" / "own.yaml"
    study_file.write_text(yaml.safe_dump({"name": "own", "search_space": "../spaces/space.yaml", "trials": 2,
                                          "fixed": {"hidden_sizes": [16]}}))
    monkeypatch.chdir(tmp_path / "spaces")  # neither folder the paths are relative to
    (parameter,) = load_study(study_file).space.parameters
    assert parameter.choices[1]["path"] == str(own_npz)

    study_file.write_text(yaml.safe_dump({"name": "own", "search_space": {"parameters": {}}, "trials": 1,
                                          "fixed": {"dataset": spec("data/bars.npz")}}))
    with pytest.raises(StudyError, match=r"own\.yaml: fixed\.dataset: .*studies/data/bars\.npz: no such file"):
        load_study(study_file)


def test_pixelcnn_needs_an_image_size_its_stages_and_transforms_fit(own_npz: Path, tmp_path: Path) -> None:
    colour = np.random.default_rng(0).integers(0, 256, (4, 3, HEIGHT, WIDTH), dtype=np.uint8)
    np.savez(tmp_path / "colour.npz", train_data=colour, valid_data=colour, test_data=colour)
    base = {"dataset": spec("colour.npz", labels=None, channels=3), "model": "pixelcnn", "ordering_family": "paper",
            "filters": 8, "resnets_per_stage": 1, "mixtures": 2}
    assert preflight.check(TrainConfig.from_dict({**base, "num_orderings": 1, "stages": 2}))[:2] == (HEIGHT, WIDTH)
    with pytest.raises(preflight.PreflightError, match="must be multiples of 4; use fewer stages"):
        preflight.check(TrainConfig.from_dict({**base, "num_orderings": 1, "stages": 3}))
    with pytest.raises(preflight.PreflightError, match="10x12 images are not square.*transposes them") as info:
        preflight.check(TrainConfig.from_dict({**base, "num_orderings": 2, "stages": 2}))
    assert info.value.field == "num_orderings"


# ------------------------------------------------------------------ evaluation and the commands


def test_data_without_labels_is_evaluated_without_sample_quality_and_says_why(
        own_npz: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = TrainConfig.from_dict({"dataset": spec(labels=None), "hidden_sizes": [16], "num_orderings": 2})
    settings = {"inpaint": {"num_occlusions": 2, "images_per_occlusion": 3}, "sampling": {"num_samples": 4}}
    with caplog.at_level(logging.WARNING):
        metrics, files = evaluate_trained_model(loop.build_model(config, HEIGHT, WIDTH), config, tmp_path / "out",
                                                settings)
    assert f"{own_npz} has no labels, so no classifier can be trained for it" in caplog.text
    assert "classifier_score and frechet_distance are skipped" in caplog.text
    assert not any(name.endswith(("classifier_score", "frechet_distance")) for name in metrics)
    assert metrics["sampling/sequential/1/network_evaluations"] == HEIGHT * WIDTH
    assert "inpaint/worst/evidence_weighted/nll_exact" in metrics
    assert [path.name for path in files] == ["inpainting.png", "speed_quality.csv", "speed_quality.png"]
    assert not (tmp_path / "cache").exists()


def test_pixelcnn_on_colour_data_from_the_train_command_and_scored_by_its_labels(
        own_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None) -> None:
    """8x8 colour images whose label is the brightest channel; relative paths start at the working directory."""
    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", 40), ("valid", 8), ("test", 20)):
        labels = rng.integers(0, 3, n)
        images = rng.integers(0, 100, (n, 3, 8, 8))
        images[np.arange(n), labels] += 150
        arrays |= {f"{split}_data": images.astype(np.uint8), f"{split}_labels": labels}
    np.savez(tmp_path / "colour.npz", **arrays)
    values = {"dataset": spec("colour.npz", shape=[8, 8], channels=3), "model": "pixelcnn", "ordering_family": "paper",
              "num_orderings": 2, "filters": 8, "resnets_per_stage": 1, "stages": 2, "mixtures": 2, "epochs": 1,
              "batch_size": 20}
    argv = ["--config", json.dumps(values), "--checkpoint-dir", "runs", "--test"]
    assert loop.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dataset_sha256"] == file_sha256(tmp_path / "colour.npz")
    assert math.isfinite(summary["test_nll_image"])

    model, config = loop.load_model(Path(summary["checkpoint"]))
    metrics, _ = evaluate_trained_model(model, config, tmp_path / "out",
                                        {"inpaint": None, "sampling": {"num_samples": 3}})
    scores = [value for name, value in metrics.items() if name.endswith("classifier_score")]
    assert scores and all(1.0 <= score <= 3.0 for score in scores)  # 3 classes
    record = json.loads(next((tmp_path / "cache").glob("classifier_npz-*.json")).read_text())
    assert record["settings"]["classes"] == 3 and record["test_accuracy"] > 0.8


def test_table1_protocol_on_own_data_and_refused_colour(own_npz: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--hidden-sizes", "8", "--epochs", "1", "--ks", "2", "--num-occlusions", "1",
              "--images-per-occlusion", "2", "--work-dir", "runs"]
    assert table1.main(["--out", "t.md", "--dataset", json.dumps(spec()), *common]) == 0
    text = (tmp_path / "t.md").read_text()
    assert text.startswith(f"# Table 1 on your own data: inpainting on {own_npz}") and "(0." not in text
    assert (tmp_path / "t.png").is_file()
    np.savez(tmp_path / "colour.npz", **{f"{s}_data": np.zeros((2, 3, HEIGHT, WIDTH), np.uint8) for s in SIZES})
    capsys.readouterr()
    colour = json.dumps(spec("colour.npz", channels=3, labels=None))
    assert table1.main(["--out", "c.md", "--dataset", colour, *common]) == 2
    assert "--dataset: " in capsys.readouterr().err and not (tmp_path / "c.md").exists()


# ------------------------------------------------------------------ a study and its export


@pytest.fixture(scope="module")
def ray_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local Ray whose workers keep their classifiers in this (empty) cache folder."""
    cache = tmp_path_factory.mktemp("ray_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(quality.CACHE_DIR_ENV, str(cache))  # workers inherit the environment of ray.init
        ray.shutdown()  # the tests' shared Ray (conftest), if another module started it
        local_ray()
        yield cache
        ray.shutdown()


def test_study_and_export_on_10x12_images(ray_cache: Path, own_npz: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "studies").mkdir()
    study_file = tmp_path / "studies" / "bars.yaml"
    study_file.write_text(yaml.safe_dump({
        "name": "bars", "trials": 2, "max_concurrent_trials": 1, "pruner": "none", "resources": {"cpus": 1},
        "search_space": {"parameters": {"lr": {"distribution": "categorical", "choices": [1.0e-2, 3.0e-3]}}},
        "fixed": {"dataset": spec("../data/bars.npz"), "hidden_sizes": [16], "num_orderings": 2, "epochs": 2,
                  "batch_size": 50},
        "evaluation": {"inpaint": {"cases": ["best", "worst"], "fills": ["single"], "num_occlusions": 2,
                                   "images_per_occlusion": 5},
                       "sampling": {"num_samples": 10}}}, sort_keys=False))
    output = tmp_path / "out"
    rows = run_study(load_study(study_file), output)

    assert [row["status"] for row in rows] == ["completed", "completed"]
    for row in rows:
        assert math.isfinite(row["inpaint/worst/single/nll_exact"])
        assert 1.0 <= row["sampling/sequential/1/classifier_score"] <= 3.0
    evaluation = tables.read(output / tables.FOLDER / "evaluation.parquet").to_pylist()
    long = {(r["trial_id"], f"{r['kind']}/{r['case'] or r['sampler']}/{r['fill'] or r['knob']}/{metric}"): value
            for r in evaluation for metric, value in r.items() if isinstance(value, float)}
    assert long == {(row["trial_id"], key): value for row in rows for key, value in row.items()
                    if key.startswith(("inpaint/", "sampling/"))}
    assert (output / "speed_quality_pareto.png").is_file() and (output / "learning_curves.png").is_file()
    client = MlflowClient(tracking.default_uri(output))
    experiment = client.get_experiment_by_name("bars")
    children = [run for run in client.search_runs([experiment.experiment_id]) if tracking.TRIAL_TAG in run.data.tags]
    assert len(children) == 2
    for run in children:
        assert run.data.params["dataset_sha256"] == file_sha256(own_npz)
        assert json.loads(run.data.params["dataset"])["path"] == str(own_npz)
    (record,) = ray_cache.glob("classifier_npz-*.json")
    assert json.loads(record.read_text())["test_accuracy"] > 0.8

    assert command.main(["--output", str(output), "--top", "1", "--out", "exports"]) == 0
    (folder,) = (tmp_path / "exports").iterdir()
    architecture = json.loads((folder / ARCHITECTURE).read_text())
    assert (architecture["height"], architecture["width"], architecture["dim"]) == (HEIGHT, WIDTH, HEIGHT * WIDTH)
    assert yaml.safe_load((folder / CONFIG).read_text())["dataset"]["path"] == str(own_npz)
    assert f"{own_npz} (10x12 binary images)" in (folder / CARD).read_text()
    model, config, _ = load_export(folder)
    assert config.dataset.path == str(own_npz) and model.dim == HEIGHT * WIDTH
    capsys.readouterr()
    assert evaluate.main([str(folder), "--json"]) == 0
    assert math.isfinite(json.loads(capsys.readouterr().out)["nll_image"])

