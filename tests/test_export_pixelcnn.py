"""FARM+PixelCNN++ exports (farm-pixelcnn/1) of a real tiny study: the documented plain-PyTorch reference recomputes
their bits/dim, the export holds the weights the trial was evaluated with, every evaluate task runs, tampering is
refused."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from farm_sweep.export import command, evaluate, formats, pixelcnn_format
from farm_sweep.export import folder as export_folder
from farm_sweep.pixelcnn.task import dataset_log_probs
from farm_sweep.sweep import tracking
from farm_sweep.sweep.results_table import read_table
from farm_sweep.sweep.runner import run_study
from farm_sweep.sweep.study import load_study
from farm_sweep.training.loop import load_model

ROOT = Path(__file__).resolve().parents[1]
SIZE = 8
TEST_IMAGES = 100  # --task inpaint's default protocol: 10 occlusions x 10 images
TRIALS = [{"causal": "raster", "weight_sharing": "shared", "ema_decay": 0.9},
          {"causal": "antidiagonal", "weight_sharing": "separate", "ema_decay": 0.0}]


def colour_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """8x8 RGB images: a random colour per image, brighter towards the bottom right, plus noise."""
    ramp = np.add.outer(np.arange(SIZE), np.arange(SIZE)) * 8
    base = rng.integers(0, 128, (n, 3, 1, 1)) + ramp
    return np.clip(base + rng.integers(-10, 11, (n, 3, SIZE, SIZE)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def study_output(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A finished 2-trial study, k=2 paper orderings, one epoch: raster with shared weights and a weight
    average, anti-diagonal with one network per ordering."""
    folder = tmp_path_factory.mktemp("pixelcnn_study")
    rng = np.random.default_rng(0)
    np.savez(folder / "colour.npz", **{f"{split}_data": colour_images(rng, n)
                                       for split, n in (("train", 48), ("valid", 16), ("test", TEST_IMAGES))})
    document = {
        "name": "pixels", "trials": 2, "pruner": "none", "max_concurrent_trials": 2, "resources": {"cpus": 1},
        "fixed": {"dataset": {"format": "npz", "path": "colour.npz", "shape": [SIZE, SIZE], "channels": 3},
                  "model": "pixelcnn", "ordering_family": "paper", "num_orderings": 2, "filters": 4,
                  "resnets_per_stage": 1, "stages": 2, "mixtures": 2, "dropout": 0.0, "epochs": 1, "batch_size": 16,
                  "lr": 0.01},
        "search_space": {"parameters": {name: {"distribution": "categorical", "choices": [t[name] for t in TRIALS]}
                                        for name in TRIALS[0]}},
        "enqueue": TRIALS}
    (folder / "pixels.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    run_study(load_study(folder / "pixels.yaml"), folder / "out")
    yield folder / "out"


@pytest.fixture(scope="module")
def exported(study_output: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two exports by causal variant."""
    out = tmp_path_factory.mktemp("exports")
    assert command.main(["--output", str(study_output), "--top", "2", "--out", str(out)]) == 0
    folders = sorted(out.iterdir())
    return {json.loads((folder / export_folder.ARCHITECTURE).read_text())["causal"]: folder for folder in folders}


@pytest.fixture(scope="module")
def images(study_output: Path) -> torch.Tensor:
    return torch.from_numpy(np.load(study_output.parent / "colour.npz")["test_data"][:20])


def reference() -> dict:
    """The plain-PyTorch reference exactly as docs/export_pixelcnn.md prints it."""
    text = (ROOT / "docs" / "export_pixelcnn.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    namespace: dict = {}
    exec(compile(code, "docs/export_pixelcnn.md", "exec"), namespace)  # noqa: S102 (our own documentation)
    return namespace


def test_trials_are_exported_in_the_pixelcnn_format(exported: dict[str, Path]) -> None:
    raster, antidiagonal = (json.loads((exported[c] / export_folder.ARCHITECTURE).read_text())
                            for c in ("raster", "antidiagonal"))
    assert raster["format"] == antidiagonal["format"] == pixelcnn_format.FORMAT
    assert (raster["weights"], raster["weight_sharing"], raster["num_networks"]) == ("ema", "shared", 1)
    assert (antidiagonal["weights"], antidiagonal["weight_sharing"], antidiagonal["num_networks"]) == (
        "trained", "separate", 2)
    assert [o["transform"] for o in raster["orderings"]] == ["identity", "rot90_cw"]
    assert [o["network"] for o in antidiagonal["orderings"]] == ["net0", "net1"]
    assert antidiagonal["layers"]["init"]["mask"] and not raster["layers"]["u_init"]["mask"]
    for folder in exported.values():
        assert {f.name for f in folder.iterdir()} == {*export_folder.FILES, export_folder.MANIFEST}
        card = (folder / export_folder.CARD).read_text()
        nll = json.loads((folder / export_folder.METRICS).read_text())["nll_image"]
        assert card.startswith("# FARM+PixelCNN++") and f"{nll / (3 * SIZE * SIZE * math.log(2))} bits/dim" in card
        assert formats.input_shape(folder) == (3, SIZE, SIZE)


def test_an_export_holds_every_weight_the_trial_was_evaluated_with(exported: dict[str, Path], study_output: Path,
                                                                   images: torch.Tensor) -> None:
    rows = {json.loads((folder / export_folder.METRICS).read_text())["trial_id"]: folder
            for folder in exported.values()}
    for row in read_table(study_output / "trials.csv"):
        folder = rows[row["trial_id"]]
        trial, config = load_model(study_output / row["checkpoint"])
        model, _, _ = formats.load_export(folder)
        exported_values = dataset_log_probs(model, images)
        with trial.averaged():
            assert torch.equal(dataset_log_probs(trial, images), exported_values)
        averaged = config.ema_decay > 0
        assert torch.equal(dataset_log_probs(trial, images), exported_values) is not averaged  # average != weights
        floats = [t for t in load_file(folder / export_folder.TENSORS).values() if t.is_floating_point()]
        assert sum(t.numel() for t in floats) == sum(p.numel() for p in model.parameters())


def test_the_reference_recomputes_bits_per_dim(exported: dict[str, Path], images: torch.Tensor) -> None:
    namespace = reference()
    for folder in exported.values():
        nll, bpd = namespace["farm_pixelcnn_bpd"](folder, images)
        values = evaluate.evaluate_images(folder, images.numpy())
        np.testing.assert_allclose(bpd.numpy(), values["bpd"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(nll.numpy(), values["nll_image"], rtol=1e-6)
        assert np.allclose(np.array(values["bpd"]), np.array(values["nll_image"]) / (3 * SIZE * SIZE * math.log(2)))


def test_evaluate_runs_every_task_on_a_pixelcnn_export(exported: dict[str, Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    folder = exported["antidiagonal"]
    results = {}
    for task in ("nll", "inpaint", "sample"):
        assert evaluate.main([str(folder), "--task", task, "--json"]) == 0
        results[task] = json.loads(capsys.readouterr().out)
    nll = results["nll"]
    assert nll["bpd"] == pytest.approx(nll["nll_image"] / (3 * SIZE * SIZE * math.log(2)))
    assert {"bpd_ordering_0", "bpd_ordering_1"} <= set(nll)
    assert math.isfinite(results["inpaint"]["inpaint/best/evidence_weighted/bpd_exact"])
    sample = results["sample"]
    assert sample["sampling/sequential/1/network_evaluations"] == SIZE * SIZE
    assert sample[f"sampling/wavefront/{SIZE}/network_evaluations"] == 2 * SIZE - 1  # one per anti-diagonal


def test_images_the_export_does_not_take_are_refused(exported: dict[str, Path], images: torch.Tensor) -> None:
    folder = exported["raster"]
    with pytest.raises(ValueError, match=r"images: shape \[20, 3, 4, 4\]; .* \(N, 3, 8, 8\)"):
        evaluate.evaluate_images(folder, images[:, :, :4, :4])
    with pytest.raises(ValueError, match=r"whole numbers 0\.\.255 .*not values scaled to \[0, 1\]"):
        evaluate.evaluate_images(folder, images.float() / 255)


def test_a_pixelcnn_export_is_an_mlflow_model_that_answers_as_evaluate(exported: dict[str, Path], study_output: Path,
                                                                       images: torch.Tensor) -> None:
    """The export command logged each export as a Logged Model of its trial's run; pyfunc loads it by its format."""
    client = tracking.load(study_output).client
    by_trial = {model.tags["trial_id"]: model for model in client.search_logged_models(
        [client.get_experiment_by_name("pixels").experiment_id])}
    folder = exported["antidiagonal"]
    logged = by_trial[json.loads((folder / export_folder.METRICS).read_text())["trial_id"]]
    assert logged.model_type == pixelcnn_format.FORMAT
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking.default_uri(study_output))
    try:
        model = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    finally:
        mlflow.set_tracking_uri(previous)
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, 3, SIZE, SIZE)
    answer = model.predict(images.numpy())
    expected = evaluate.evaluate_images(folder, images.numpy())
    np.testing.assert_allclose(answer["nll_image"], expected["nll_image"], rtol=1e-6)
    drawn = model.predict(images[:1].numpy(), {"task": "sample", "num_samples": 2, "sampler": "wavefront"})
    assert drawn["images"].shape == (2, 3, SIZE, SIZE) and drawn["images"].dtype == np.uint8
    assert (drawn["network_evaluations"] == 2 * SIZE - 1).all()  # one per anti-diagonal


def resealed(folder: Path, tmp_path: Path, change_tensors=None, **architecture: object) -> Path:
    """A copy of an export with tensors or architecture.json changed, and a manifest that matches again."""
    copy = tmp_path / "altered"
    shutil.copytree(folder, copy)
    if change_tensors:
        tensors = load_file(copy / export_folder.TENSORS)
        change_tensors(tensors)
        save_file(tensors, copy / export_folder.TENSORS)
    described = json.loads((copy / export_folder.ARCHITECTURE).read_text())
    (copy / export_folder.ARCHITECTURE).write_text(json.dumps(described | architecture))
    export_folder.write_manifest(copy)
    return copy


def test_load_export_refuses_what_the_config_does_not_build(exported: dict[str, Path], tmp_path: Path) -> None:
    def flip_mask(tensors: dict[str, torch.Tensor]) -> None:
        tensors["net1.init.mask"] = 1 - tensors["net1.init.mask"]

    with pytest.raises(export_folder.ExportError, match=r"model\.safetensors: net1\.init\.mask differs"):
        formats.load_export(resealed(exported["antidiagonal"], tmp_path / "mask", flip_mask))
    with pytest.raises(export_folder.ExportError, match=r"architecture\.json: weights differ"):
        formats.load_export(resealed(exported["raster"], tmp_path / "weights", weights="trained"))
    with pytest.raises(export_folder.ExportError, match=r"format 'farm-pixelcnn/0', expected 'farm-made/2' or "
                                                        r"'farm-pixelcnn/1'; re-export"):
        formats.load_export(resealed(exported["raster"], tmp_path / "format", format="farm-pixelcnn/0"))
