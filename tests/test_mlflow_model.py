"""Exports as MLflow Models of a real study: Logged Models linked to their runs, pyfunc predictions, the registry
with its champion alias, and `mlflow models serve` answering over HTTP as farm_sweep.evaluate does."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from farm_sweep.data import load_dataset
from farm_sweep.export import command, evaluate, registry
from farm_sweep.export.formats import load_export
from farm_sweep.sweep import tracking
from farm_sweep.sweep.results_table import read_table
from tests.processes import free_port, start_server, stop


@contextlib.contextmanager
def tracking_uri(uri: str) -> Iterator[None]:
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def export(study: Path, out: Path) -> tuple[list[Path], str]:
    """`python -m farm_sweep.export --output STUDY --top 2 --out OUT --register`: the folders and what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert command.main(["--output", str(study), "--top", "2", "--out", str(out), "--register"]) == 0
    return sorted(out.iterdir()), printed.getvalue()


@pytest.fixture(scope="module")
def exported(tiny_study: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], str]:
    return export(tiny_study, tmp_path_factory.mktemp("exports"))


@pytest.fixture(scope="module")
def client(tiny_study: Path) -> MlflowClient:
    return MlflowClient(tracking.default_uri(tiny_study))


def model_id(folder: Path, printed: str) -> str:
    (line,) = [line for line in printed.splitlines() if line.startswith(f"logged {folder.name} ")]
    return line.split("models:/")[1].split()[0]


def test_each_export_is_a_logged_model_of_its_run_with_its_metrics(exported: tuple[list[Path], str],
                                                                   client: MlflowClient, tiny_study: Path) -> None:
    folders, printed = exported
    rows = {row["trial_id"]: row for row in read_table(tiny_study / "trials.csv")}
    for folder in folders:
        metrics = json.loads((folder / "metrics.json").read_text())
        model = client.get_logged_model(model_id(folder, printed))
        assert model.source_run_id == metrics["mlflow_run_id"] and model.status == "READY"
        assert model.model_type == "farm-made/2" and model.tags["trial_id"] == metrics["trial_id"]
        linked = {metric.key: metric.value for metric in model.metrics}
        assert linked["nll_image"] == pytest.approx(float(rows[metrics["trial_id"]]["nll_image"]))
        run = client.get_run(model.source_run_id)
        assert model.model_id in [output.model_id for output in run.outputs.model_outputs]
        local = Path(mlflow.artifacts.download_artifacts(model.artifact_location))
        mlmodel = yaml.safe_load((local / "MLmodel").read_text())
        assert mlmodel["flavors"]["python_function"]["loader_module"] == "farm_sweep.export.pyfunc"
        assert not [path for path in local.rglob("*") if path.suffix in (".pkl", ".pickle", ".pt", ".pth")]
        assert (local / "data" / folder.name / "model.safetensors").is_file()
        signature = mlmodel["signature"]
        assert json.loads(signature["inputs"])[0]["tensor-spec"]["shape"] == [-1, 8, 8]
        assert {param["name"] for param in json.loads(signature["params"])} >= {"task", "num_samples", "sampler"}
        assert json.loads((local / "serving_input_example.json").read_text())["params"] == {"task": "nll"}


def test_pyfunc_predicts_per_image_nll_and_bits_per_dim(exported: tuple[list[Path], str], tiny_study: Path) -> None:
    folders, printed = exported
    with tracking_uri(tracking.default_uri(tiny_study)):
        model = mlflow.pyfunc.load_model(f"models:/{model_id(folders[0], printed)}")
    images = load_dataset("digits", "test").images.reshape(-1, 8, 8).numpy()
    answer = model.predict(images)
    assert answer["nll_image"].shape == (len(images),) and (answer["nll_image"] > 0).all()
    np.testing.assert_allclose(answer["bpd"], answer["nll_image"] / (64 * math.log(2)))
    network, config, _ = load_export(folders[0])
    expected = evaluate.evaluate(network, config, "nll")  # farm_sweep.made.likelihood's mean over the split
    assert answer["nll_image"].mean() == pytest.approx(expected["nll_image"], rel=1e-6)
    assert answer["bpd"].mean() == pytest.approx(expected["bpd"], rel=1e-6)


def test_params_select_inpainting_and_sampling(exported: tuple[list[Path], str], tiny_study: Path) -> None:
    folders, printed = exported
    with tracking_uri(tracking.default_uri(tiny_study)):
        model = mlflow.pyfunc.load_model(f"models:/{model_id(folders[0], printed)}")
    images = load_dataset("digits", "test").images[:6].reshape(-1, 8, 8).numpy()
    filled = model.predict(images, {"task": "inpaint", "case": "average", "fill": "evidence_weighted", "seed": 3})
    hole = filled["hole"]
    assert hole.shape == images.shape and hole.any() and not hole.all()
    np.testing.assert_array_equal(filled["images"][~hole], images[~hole])  # the evidence stays as it was
    assert set(np.unique(filled["images"])) <= {0.0, 1.0}
    assert (filled["nll_hole"] > 0).all() and (filled["nll_hole_exact"] > 0).all()
    # fixed_point run to its default (D iterations) is exact: the sequential sample from the same noise
    exact = model.predict(images[:1], {"task": "sample", "num_samples": 5, "sampler": "fixed_point", "seed": 7})
    sequential = model.predict(images[:1], {"task": "sample", "num_samples": 5, "sampler": "sequential", "seed": 7})
    assert exact["images"].shape == (5, 8, 8)
    np.testing.assert_array_equal(exact["images"], sequential["images"])
    assert exact["network_evaluations"][0] <= sequential["network_evaluations"][0] == 64
    with pytest.raises(ValueError, match="task 'denoise' is not one of nll, inpaint, sample"):
        model.predict(images, {"task": "denoise"})
    with pytest.raises(ValueError, match="values must be 0 or 1"):
        model.predict(images * 2)


def test_register_tags_versions_and_points_champion_at_the_best(exported: tuple[list[Path], str],
                                                                client: MlflowClient, tiny_study: Path) -> None:
    folders, printed = exported
    versions = {str(v.version): v for v in client.search_model_versions("name = 'farm-tiny'")}
    assert sorted(versions) == ["1", "2"]
    rows = {row["trial_id"]: row for row in read_table(tiny_study / "trials.csv")}
    for version in versions.values():
        row = rows[version.tags["trial_id"]]
        assert version.tags["study"] == "tiny" and version.run_id == row["mlflow_run_id"]
        assert float(version.tags["metric.nll_image"]) == pytest.approx(float(row["nll_image"]))
        assert version.tags["param.lr"] == row["param.lr"]
        assert json.loads(version.tags["config"])["lr"] == float(row["param.lr"])
    best = min(rows.values(), key=lambda row: float(row["nll_image"]))
    champion = client.get_model_version_by_alias("farm-tiny", registry.CHAMPION)
    assert champion.tags["trial_id"] == best["trial_id"]
    assert f"alias champion: models:/farm-tiny@champion is version {champion.version}" in printed
    with tracking_uri(tracking.default_uri(tiny_study)):
        loaded = mlflow.pyfunc.load_model("models:/farm-tiny@champion")
    assert f"models:/{loaded.metadata.model_id}" == champion.source


def test_exporting_and_registering_again_adds_nothing(exported: tuple[list[Path], str], client: MlflowClient,
                                                      tiny_study: Path, tmp_path: Path) -> None:
    experiment = client.get_experiment_by_name("tiny").experiment_id
    models_before = {model.model_id for model in client.search_logged_models([experiment])}
    folders, printed = export(tiny_study, tmp_path / "again")
    assert {model.model_id for model in client.search_logged_models([experiment])} == models_before
    assert sorted(str(v.version) for v in client.search_model_versions("name = 'farm-tiny'")) == ["1", "2"]
    assert printed.count("registered ") == 2 and "models:/farm-tiny/1" in printed and "farm-tiny/2" in printed


def test_served_champion_answers_as_evaluate_per_image(exported: tuple[list[Path], str], tiny_study: Path,
                                                       tmp_path: Path) -> None:
    folders, _ = exported
    champion = MlflowClient(tracking.default_uri(tiny_study)).get_model_version_by_alias("farm-tiny", "champion")
    (folder,) = [f for f in folders if json.loads((f / "metrics.json").read_text())["trial_id"]
                 == champion.tags["trial_id"]]
    assert evaluate.main([str(folder), "--per-image", str(tmp_path / "per_image.csv")]) == 0
    with open(tmp_path / "per_image.csv", newline="") as handle:
        expected = list(csv.DictReader(handle))
    images = load_dataset("digits", "test").images[:20].reshape(-1, 8, 8)

    port = free_port()
    serve = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/farm-tiny@champion",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    server = start_server(serve, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log",
                          env={"MLFLOW_TRACKING_URI": tracking.default_uri(tiny_study)})
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps({"inputs": images.tolist()}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())["predictions"]
    finally:
        stop(server)
    assert len(answer["nll_image"]) == len(images)
    for served_nll, served_bpd, row in zip(answer["nll_image"], answer["bpd"], expected):
        assert served_nll == pytest.approx(float(row["nll_image"]), rel=1e-6)
        assert served_bpd == pytest.approx(float(row["bpd"]), rel=1e-6)
