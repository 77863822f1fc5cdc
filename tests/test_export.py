"""Export the best trials of a real (tiny) study, recompute them with NumPy alone, evaluate, register."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file, save_file

from farm_sweep.data import load_dataset
from farm_sweep.export import command, evaluate
from farm_sweep.export import folder as export_folder
from farm_sweep.export import format as export_format
from farm_sweep.made.likelihood import nll_image
from farm_sweep.made.network import WEIGHT_SHARING
from farm_sweep.sweep import tracking
from farm_sweep.sweep.runner import run_study
from farm_sweep.sweep.study import load_study

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study_output(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A finished 4-trial study: every weight-sharing scheme, with and without direct connections, 2 orderings,
    2 mask sets, 2 epochs."""
    folder = tmp_path_factory.mktemp("study")
    schemes = [("shared", False), ("separate", True), ("shared_hidden", True), ("ordering_embedding", False)]
    document = {
        "name": "export", "trials": 4, "pruner": "none", "max_concurrent_trials": 2, "resources": {"cpus": 1},
        "fixed": {"dataset": "digits", "hidden_sizes": [32, 32], "epochs": 2, "num_orderings": 2,
                  "num_masks": 2, "lr": 0.01},
        "search_space": {"parameters": {
            "weight_sharing": {"distribution": "categorical", "choices": [sharing for sharing, _ in schemes]},
            "direct_connections": {"distribution": "categorical", "choices": [False, True]}}},
        "enqueue": [{"weight_sharing": sharing, "direct_connections": direct} for sharing, direct in schemes]}
    (folder / "export.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    run_study(load_study(folder / "export.yaml"), folder / "out")
    yield folder / "out"


@pytest.fixture(scope="module")
def exported(study_output: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("exports")
    assert command.main(["--output", str(study_output), "--top", "4", "--out", str(out)]) == 0
    return sorted(out.iterdir())


def numpy_reference() -> dict:
    """The NumPy reference exactly as docs/export_format.md prints it."""
    text = (ROOT / "docs" / "export_format.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    namespace: dict = {}
    exec(compile(code, "docs/export_format.md", "exec"), namespace)  # noqa: S102 (our own documentation)
    return namespace


def test_export_writes_the_best_trials_self_described(exported: list[Path], study_output: Path) -> None:
    assert [p.name[:3] for p in exported] == ["01_", "02_", "03_", "04_"]
    values = [json.loads((p / "metrics.json").read_text())["nll_image"] for p in exported]
    assert values == sorted(values)
    for folder in exported:
        assert {f.name for f in folder.iterdir()} == {"model.safetensors", "architecture.json", "config.yaml",
                                                       "metrics.json", "README.md", "manifest.json"}
        architecture = json.loads((folder / "architecture.json").read_text())
        assert architecture["format"] == export_format.FORMAT and architecture["num_masks"] == 2
        assert "Validation nll_image" in (folder / "README.md").read_text()
    schemes = {(a["weight_sharing"], a["direct"] is not None)
               for a in (json.loads((p / "architecture.json").read_text()) for p in exported)}
    assert schemes == {("shared", False), ("separate", True), ("shared_hidden", True), ("ordering_embedding", False)}


def test_numpy_reference_recomputes_the_model(exported: list[Path]) -> None:
    reference = numpy_reference()
    images = load_dataset("digits", "test").images[:50]
    for folder in exported:
        model, _, metrics = export_format.load_export(folder)
        for mask_set in range(2):
            model.set_mask(mask_set)
            with torch.no_grad():
                expected = model(images).double().numpy()
            actual = reference["farm_made_logits"](folder, images.numpy(), mask_set)
            np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-5)
        model.set_mask(0)
        nll = reference["farm_made_nll"](folder, images.numpy()).mean()
        assert nll == pytest.approx(nll_image(model, images)["nll_image"], abs=1e-4)
        assert metrics["param.weight_sharing"] in WEIGHT_SHARING


def altered_copy(folder: Path, tmp_path: Path, name: str, change: Callable[[torch.Tensor], torch.Tensor]) -> Path:
    """A copy of an export with tensor `name` changed (and manifest.json left as it was)."""
    copy = tmp_path / "altered"
    shutil.copytree(folder, copy)
    tensors = load_file(copy / "model.safetensors")
    tensors[name] = change(tensors[name])
    save_file(tensors, copy / "model.safetensors")
    return copy


def test_the_manifest_catches_weights_altered_to_other_finite_values(exported: list[Path], tmp_path: Path) -> None:
    folder = altered_copy(exported[0], tmp_path, "layer1.weight", lambda weight: weight * 0.5)
    with pytest.raises(export_folder.ExportError, match=r"model\.safetensors: sha256 does not match manifest\.json"):
        export_format.load_export(folder)
    with pytest.raises(ValueError, match="model.safetensors: altered"):
        numpy_reference()["check_manifest"](folder)


def test_the_documented_sha256sum_check_passes_on_an_export(exported: list[Path]) -> None:
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    text = (ROOT / "docs" / "export_format.md").read_text()
    (command,) = re.findall(r"```sh\n(.*?)\n```", text, flags=re.S)
    result = subprocess.run(command, shell=True, cwd=exported[0], capture_output=True, text=True, check=True)
    assert result.stdout.count(": OK") == len(export_folder.FILES)


def test_load_export_rejects_a_tampered_mask_behind_a_rewritten_manifest(exported: list[Path],
                                                                         tmp_path: Path) -> None:
    folder = altered_copy(exported[0], tmp_path, "layer0.mask", lambda mask: 1 - mask)
    export_folder.write_manifest(folder)
    with pytest.raises(export_folder.ExportError, match="layer0.mask differs"):
        export_format.load_export(folder)


def test_evaluate_prints_test_metrics(exported: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main([str(exported[0]), "--task", "nll", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["nll_image"] > 0 and set(metrics) >= {"nll_image_ordering_0", "nll_image_ordering_1", "bpd"}
    assert evaluate.main([str(exported[0].parent), "--json"]) == 2


def test_every_scheme_is_logged_as_an_mlflow_model_that_gives_its_likelihood(exported: list[Path],
                                                                              study_output: Path) -> None:
    """Export logs each folder as an MLflow Model of its trial's run (tests/test_mlflow_model.py has the rest)."""
    client = MlflowClient(tracking.default_uri(study_output))
    images = load_dataset("digits", "test").images[:40]
    for folder in exported:
        run = client.get_run(json.loads((folder / "metrics.json").read_text())["mlflow_run_id"])
        (output,) = run.outputs.model_outputs
        model = mlflow.pyfunc.load_model(client.get_logged_model(output.model_id).artifact_location)
        expected = nll_image(export_format.load_export(folder)[0], images)["nll_image"]
        assert model.predict(images.reshape(-1, 8, 8).numpy())["nll_image"].mean() == pytest.approx(expected, rel=1e-6)


def test_export_without_a_finished_study_exits_2(tmp_path: Path) -> None:
    assert command.main(["--output", str(tmp_path), "--top", "1", "--out", str(tmp_path / "x")]) == 2
