"""Exports in the study's MLflow store: each one logged as an MLflow 3 Logged Model of its trial's run (the MLflow
Model of farm_sweep.export.pyfunc, linked to the run with the metrics of the trial's last epoch), and with
`--register` a version of the registered model `farm-<study>`, tagged with the study, trial, configuration and
validation metrics, the alias `champion` on the version with the lowest validation nll_image.

Both are idempotent: a Logged Model is found again by its run and the sha256 of its weights, a version by its
source (the Logged Model's URI), so exporting and registering the same trials again adds nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric

from farm_sweep.export import pyfunc
from farm_sweep.export.folder import ARCHITECTURE, CONFIG, METRICS, REEXPORT, TENSORS, ExportError
from farm_sweep.integrity import file_sha256
from farm_sweep.sweep import stores
from farm_sweep.sweep.results_table import METRIC
from farm_sweep.sweep.tracking import Tracker
from farm_sweep.untrusted import load_json, load_yaml, quote, read_text

WEIGHTS_TAG = "weights_sha256"
CHAMPION = "champion"
FACTS = ("trial_id", "optuna_trial", "status", "epochs", "best_epoch", "stopped_early", "mlflow_run_id")


@dataclass(frozen=True)
class LoggedExport:
    """An export folder and the Logged Model it is in the study's store."""

    folder: Path
    study: str
    model_id: str
    run_id: str
    metrics: Mapping[str, Any]

    @property
    def uri(self) -> str:
        return f"models:/{self.model_id}"


def study_name(tracker: Tracker) -> str:
    """The study's name: its MLflow experiment's (the output folder may be named otherwise)."""
    return tracker.client.get_experiment(tracker.experiment_id).name


def registered_name(study: str) -> str:
    return f"farm-{study}"


def log_exports(tracker: Tracker, folders: Sequence[Path]) -> list[LoggedExport]:
    """Each export as a Logged Model of its trial's run (the one already there when the run has it)."""
    study = study_name(tracker)
    with _tracking_uri(tracker.uri):
        return [_log(tracker, study, folder) for folder in folders]


@contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's model logging writes to the current tracking URI: the study's store while logging (with the
    password this process was given for it: farm_sweep.sweep.stores), then as before."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(stores.reveal(uri))
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def _log(tracker: Tracker, study: str, folder: Path) -> LoggedExport:
    metrics = load_json(folder / METRICS)
    run_id = _run_id(folder, metrics)
    weights = file_sha256(folder / TENSORS)
    client = tracker.client
    found = client.search_logged_models(
        [tracker.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND tags.`{WEIGHTS_TAG}` = '{weights}'")
    ready = [model for model in found if model.status == LoggedModelStatus.READY]
    if ready:
        return LoggedExport(folder, study, ready[0].model_id, run_id, metrics)
    model = client.create_logged_model(
        tracker.experiment_id, name=f"trial_{metrics['trial_id']}", source_run_id=run_id,
        params=client.get_run(run_id).data.params, model_type=load_json(folder / ARCHITECTURE)["format"],
        tags={"study": study, "trial_id": metrics["trial_id"], WEIGHTS_TAG: weights})
    pyfunc.log_model(folder, model.model_id)
    step = int(metrics["epochs"])
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    _link_metrics(client, run_id, model.model_id, step)
    return LoggedExport(folder, study, model.model_id, run_id, metrics)


def _run_id(folder: Path, metrics: Mapping[str, Any]) -> str:
    run_id = metrics.get("mlflow_run_id", "")
    if not isinstance(run_id, str) or not run_id.isalnum():
        raise ExportError(f"{folder / METRICS}: mlflow_run_id {quote(run_id)} is not an MLflow run id, so the "
                          "export cannot be logged to its trial's run; the study's tracking store did not record "
                          "the trial (its calls wait in tracking_unlogged.jsonl until the study is resumed), or "
                          f"{REEXPORT}")
    return run_id


def _link_metrics(client: MlflowClient, run_id: str, model_id: str, step: int) -> None:
    """The run's metrics at `step` logged again for the Logged Model, unchanged (as mlflow.*.log_model does)."""
    linked = [Metric(entry.key, entry.value, entry.timestamp, entry.step, run_id=run_id, model_id=model_id)
              for key in client.get_run(run_id).data.metrics
              for entry in client.get_metric_history(run_id, key) if entry.step == step]
    client.log_batch(run_id, metrics=linked)


@dataclass(frozen=True)
class Registration:
    name: str
    versions: list[str]  # one per export, in their order
    champion: str | None


def register(tracker: Tracker, logged: Sequence[LoggedExport]) -> Registration:
    """Each Logged Model as a version of farm-<study> (its existing version when it has one), and the alias
    `champion` on the best version by validation nll_image."""
    study = study_name(tracker)
    client, name = tracker.client, registered_name(study)
    with _tracking_uri(tracker.uri):  # the registry looks a version's source up in the current tracking store
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            client.create_registered_model(name, tags={"study": study},
                                           description=f"FARM models exported from study {study}; alias "
                                                       f"{CHAMPION}: the best by validation {METRIC}")
        versions = [_version(client, name, entry) for entry in logged]
        return Registration(name, versions, crown_champion(client, name))


def _version(client: MlflowClient, name: str, entry: LoggedExport) -> str:
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.source == entry.uri:
            return str(version.version)
    created = client.create_model_version(name, entry.uri, run_id=entry.run_id, tags=version_tags(entry),
                                          model_id=entry.model_id)
    return str(created.version)


def version_tags(entry: LoggedExport) -> dict[str, str]:
    """study, the trial's facts (trial_id, optuna_trial, status, epochs, ...), config (the full TrainConfig as
    JSON), param.<sampled parameter>, metric.<validation or evaluation metric>, and the sha256 of the weights."""
    config = load_yaml(read_text(entry.folder / CONFIG))
    tags = {"study": entry.study, "config": json.dumps(config), WEIGHTS_TAG: file_sha256(entry.folder / TENSORS)}
    for key, value in entry.metrics.items():
        if key in FACTS:
            tags[key] = str(value)
        elif key.startswith("param."):
            tags[key] = json.dumps(value) if isinstance(value, list | dict) else str(value)
        elif isinstance(value, int | float) and key != "rank":
            tags[f"metric.{key}"] = str(value)
    return tags


def crown_champion(client: MlflowClient, name: str) -> str | None:
    """Point `champion` at the version with the lowest validation nll_image; returns that version."""
    scored = [(float(v.tags[f"metric.{METRIC}"]), int(v.version)) for v in client.search_model_versions(
        f"name = '{name}'") if f"metric.{METRIC}" in v.tags]
    if not scored:
        return None
    best = str(min(scored)[1])
    client.set_registered_model_alias(name, CHAMPION, best)
    return best

