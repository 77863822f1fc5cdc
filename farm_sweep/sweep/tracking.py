"""MLflow tracking: one parent run per study, one nested child run per trial; a study's confirmation stage
nests a run of its own under the parent run, and one child run per seed under that (`Tracker.stage`).

The study's experiment is marked as model training (tag `mlflow.experimentKind`). The parent run holds the
study's settings, its files, a description of what it searched (`mlflow.note.content`, Markdown), and at the end
the best trial, the trials table, the speed-quality Pareto front and the parameter importances, linked from the
description. A child run (tag `mlflow.parentRunId`), named by the trial's parameters, holds one trial's
parameters, its per-epoch metrics (step = epoch), its evaluation metrics and artifacts, its checkpoint, and a
`farm.status` tag: running, completed, pruned, failed or interrupted.

Every call goes through MlflowClient with an explicit run id (no fluent "active run" state), so the
same code runs in the driver and inside Ray trial processes. A child run is found again by its
`farm.trial_id` tag: a retried or resumed trial keeps logging into its own run, never a duplicate.
The default store is embedded: `sqlite:///<output>/mlflow.db` with artifacts in `<output>/mlartifacts`. A
database server (`postgresql://...`) keeps the artifacts there too; an MLflow server (`http://...`) keeps
its own. The Tracker holds the public URI (no password: it is written to `<output>/tracking.json`);
farm_sweep.sweep.stores supplies the password.

A tracking store (a server, a database) that goes away must not kill trials: every write is retried a few
times, then written to a journal (`<output>/tracking_unlogged.jsonl`, one JSON call a line) and training
goes on. At the end of the study the journal is replayed; what still cannot be logged stays there and the
summary says so.
A child run that could not even be created gets a pending id (`pending:<trial id>`) that replay resolves.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
from ray.tune.callback import Callback
from ray.tune.experiment import Trial

from farm_sweep.sweep import stores
from farm_sweep.sweep.reports import PRUNED_KEY

TRIAL_TAG = "farm.trial_id"
STATUS_TAG = "farm.status"
REASON_TAG = "farm.failure_reason"  # why a run ended failed or lost
STUDY_TAG = "farm.study"
STAGE_TAG = "farm.stage"  # the run of a stage of the study (the confirmation), nested under the parent run
STATE_FILE = "tracking.json"
JOURNAL_FILE = "tracking_unlogged.jsonl"
PENDING = "pending:"
# MLflow's status of a trial's run; else FINISHED
RUN_STATUS = {"failed": "FAILED", "interrupted": "KILLED", "lost": "KILLED"}
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value
MAX_RUN_NAME = 250  # and on a run's name
# MLflow 3 marks an experiment's kind with this tag; its UI (3.17) shows the kind its `workflowType` asks for.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
ATTEMPTS, BACKOFF_S = 3, 1.0
RECHECK_S = 30.0  # after a store failed every attempt, how long writes are tried once only
# MLflow's own HTTP retries back off for minutes per call; ours are short and end in the journal instead.
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}

log = logging.getLogger(__name__)
Result = TypeVar("Result")
_down_since: dict[str, float] = {}  # per process: tracking URI -> when it last failed every attempt


class TrackingUnavailable(RuntimeError):
    """The tracking store does not answer."""


def default_uri(output: Path) -> str:
    return f"sqlite:///{(output / 'mlflow.db').resolve()}"


def _journaled(method: Callable[..., Result]) -> Callable[..., Result | None]:
    """Retry a write a few times; if the store still fails, journal the call and return None. While a store
    is down (it failed a whole round of retries less than RECHECK_S ago, in this process), each write is
    tried once: a trial does not wait out the backoff on every write of an outage."""

    @functools.wraps(method)
    def wrapper(self: Tracker, *args: Any, **kwargs: Any) -> Result | None:
        attempts = 1 if time.monotonic() - _down_since.get(self.uri, -math.inf) < RECHECK_S else ATTEMPTS
        for attempt in range(attempts):
            try:
                result = method(self, *args, **kwargs)
                _down_since.pop(self.uri, None)
                return result
            except Exception as error:  # MLflow raises many types (HTTP, SQL, its own) for one cause
                if attempt == attempts - 1:
                    _down_since[self.uri] = time.monotonic()
                    self.journal_call(method.__name__, args, kwargs, error)
                    return None
                time.sleep(BACKOFF_S * 2 ** attempt)
        return None

    return wrapper


@lru_cache(maxsize=4)
def client(uri: str) -> MlflowClient:
    """One client per tracking URI and process (a database store opens its engine once). A database server that
    does not answer fails at once, before MLflow would retry opening its store for minutes."""
    for name, value in HTTP_SETTINGS.items():
        os.environ.setdefault(name, value)
    stores.probe(uri)
    return MlflowClient(uri)


@dataclass(frozen=True)
class Tracker:
    """Where a study's runs live; small and picklable, so it travels into Ray trials."""

    uri: str
    experiment_id: str
    parent_run_id: str
    journal: str | None = None

    @property
    def client(self) -> MlflowClient:
        return client(stores.reveal(self.uri))

    def ui_path(self, run_id: str | None = None, artifact: str | None = None) -> str:
        """The MLflow UI's page of the experiment, of one of its runs, or of a run's artifact (after the UI's
        address), in the model-training view."""
        path = f"#/experiments/{self.experiment_id}"
        if run_id is not None:
            path += f"/runs/{run_id}" + (f"/artifacts/{artifact}" if artifact else "")
        return f"{path}?{MODEL_TRAINING_VIEW}"

    def journal_call(self, name: str, args: tuple, kwargs: dict, error: Exception) -> None:
        """Keep a call the store refused; if even the journal cannot be written (a full disk), say so and go on:
        the study itself must not fail for its tracking."""
        reason = stores.scrub(str(error))
        log.warning("tracking: %s could not be logged (%s); kept in %s", name, reason, self.journal)
        if self.journal is None:
            return
        line = json.dumps({"call": name, "args": list(args), "kwargs": kwargs, "error": reason[:500],
                           "parent_run_id": self.parent_run_id}, default=str)
        try:
            with open(self.journal, "a") as handle:
                handle.write(line + "\n")
        except OSError as failure:
            log.error("tracking: %s is lost: the journal %s cannot be written either (%s)", name, self.journal,
                      failure.strerror or failure)

    def unlogged(self) -> list[dict[str, Any]]:
        """The journaled calls that have not reached the store."""
        if self.journal is None or not Path(self.journal).is_file():
            return []
        return [json.loads(line) for line in Path(self.journal).read_text().splitlines() if line.strip()]

    def replay(self) -> int:
        """Retry every journaled call once, in order, by a tracker with the parent run of the one that made it (the
        study's, or a stage's); keep the ones that fail again. Returns how many remain."""
        entries = self.unlogged()
        if not entries:
            return 0
        Path(self.journal).unlink()
        for entry in entries:
            tracker = replace(self, parent_run_id=entry.get("parent_run_id", self.parent_run_id))
            getattr(tracker, entry["call"])(*entry["args"], **entry["kwargs"])
        return len(self.unlogged())

    def _resolve(self, run_id: str) -> str:
        """A real run id for a pending one (its child run was created by a later replay)."""
        if not run_id.startswith(PENDING):
            return run_id
        found = self.find_child(run_id.removeprefix(PENDING))
        if found is None:
            raise TrackingUnavailable(f"child run of trial {run_id.removeprefix(PENDING)} does not exist yet")
        return found

    # ---------------------------------------------------------- child runs (one per trial)

    def find_child(self, trial_id: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{MLFLOW_PARENT_RUN_ID}` = "
                          f"'{self.parent_run_id}'")
        return runs[0].info.run_id if runs else None

    def run_of(self, trial_id: str) -> str:
        """The trial's child run id; a pending id when the store does not answer; "" when there is none."""
        try:
            return self.find_child(trial_id) or ""
        except Exception:  # unreachable store: let journaled calls resolve it later
            return PENDING + trial_id

    def child_run(self, trial_id: str, name: str, params: Mapping[str, Any], tags: Mapping[str, Any]) -> str:
        """The trial's child run: the existing one (retry, resume) or a new one with its params; a pending
        id when the store cannot be reached (the creation is journaled and replayed later)."""
        return self._child_run(trial_id, name, params, tags) or PENDING + trial_id

    @_journaled
    def _child_run(self, trial_id: str, name: str, params: Mapping[str, Any], tags: Mapping[str, Any]) -> str:
        existing = self.find_child(trial_id)
        if existing is not None:
            self.client.update_run(existing, status=RunStatus.to_string(RunStatus.RUNNING))
            self.client.log_batch(existing, tags=_tags({STATUS_TAG: "running", **tags}))  # a retry may run elsewhere
            return existing
        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            MLFLOW_PARENT_RUN_ID: self.parent_run_id, TRIAL_TAG: trial_id, STATUS_TAG: "running",
            **{key: str(value) for key, value in tags.items()}})
        self.client.log_batch(run.info.run_id, params=_params(params))
        return run.info.run_id

    @_journaled
    def end_trial(self, run_id: str, status: str, reason: str | None = None) -> None:
        """status: completed, pruned, failed or interrupted (the MLflow run ends FINISHED, FAILED or KILLED;
        an interrupted trial's run is RUNNING again when --resume continues it)."""
        run_id = self._resolve(run_id)
        self.client.set_tag(run_id, STATUS_TAG, status)
        if reason:
            self.client.set_tag(run_id, REASON_TAG, reason[:5000])
        self.client.set_terminated(run_id, RUN_STATUS.get(status, "FINISHED"))

    def end_unrecorded(self, trial_ids: Collection[str]) -> int:
        """End as `lost` (KILLED) the running child runs of trials outside `trial_ids`, the trials Tune recorded:
        a driver killed just after such a trial started, before Tune's next snapshot of its state, leaves a
        run that no trial will finish (--resume asks Optuna again, and the configuration runs as a new trial).
        Returns how many; none when the store does not answer (the runs stay as they are)."""
        try:
            running = self.client.search_runs([self.experiment_id], filter_string=(
                f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}' and tags.`{STATUS_TAG}` = 'running'"))
        except Exception as error:  # an unreachable store: a later --resume tries again
            log.warning("tracking: could not look for runs of unrecorded trials (%s)", error)
            return 0
        lost = [run for run in running if run.data.tags.get(TRIAL_TAG, "") not in {"", *trial_ids}]
        for run in lost:
            self.end_trial(run.info.run_id, "lost", reason="the driver stopped before Ray Tune recorded this "
                                                           "trial; --resume ran its configuration as a new trial")
        return len(lost)

    # ---------------------------------------------------------- logging

    @_journaled
    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        run_id = self._resolve(run_id)
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    @_journaled
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self.client.log_batch(self._resolve(run_id), params=_params(params))

    @_journaled
    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step) for key, value in metrics.items() if _is_number(value)]
        if items:
            self.client.log_batch(self._resolve(run_id), metrics=items)

    def last_step(self, run_id: str, key: str) -> int:
        """The last step logged for `key` (0 if none or unknown): what a resumed trial must not log again."""
        try:
            history = self.client.get_metric_history(self._resolve(run_id), key)
        except Exception:  # an unreachable store: log everything again rather than lose it
            return 0
        return max((m.step for m in history), default=0)

    @_journaled
    def log_files(self, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
        run_id = self._resolve(run_id)
        for path in paths:
            if Path(path).is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path)
            else:
                self.client.log_artifact(run_id, str(path), artifact_path)

    # ---------------------------------------------------------- a stage of the study (the confirmation)

    def stage(self, name: str, params: Mapping[str, Any]) -> Tracker:
        """The tracker of stage `name`: its runs nest under a run of the stage (tag farm.stage), itself nested
        under the study's parent run; a resumed stage finds its run again (RUNNING once more). Where the store
        cannot be reached, the study's own tracker: the stage's runs then nest under the parent run."""
        try:
            run_id = self._find_stage(name)
            if run_id is None:
                run_id = self.client.create_run(self.experiment_id, run_name=name, tags={
                    MLFLOW_PARENT_RUN_ID: self.parent_run_id, STAGE_TAG: name}).info.run_id
                self.client.log_batch(run_id, params=_params(params))
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            self.client.set_tag(run_id, STATUS_TAG, "running")
        except Exception as error:  # MLflow raises many types (HTTP, SQL, its own) for one cause
            log.warning("tracking: the %s run cannot be created (%s); its runs go under the study's run", name,
                        stores.scrub(str(error)))
            return self
        return replace(self, parent_run_id=run_id)

    def stage_of(self, name: str) -> Tracker:
        """The tracker of stage `name` as it stands (the study's own tracker where the stage has no run)."""
        try:
            run_id = self._find_stage(name)
        except Exception:  # an unreachable store: the rows then name no runs
            return self
        return self if run_id is None else replace(self, parent_run_id=run_id)

    def _find_stage(self, name: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{STAGE_TAG}` = '{name}' and tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.parent_run_id}'")
        return runs[0].info.run_id if runs else None

    # ---------------------------------------------------------- the study's parent run

    @_journaled
    def finish_study(self, best: Mapping[str, Any] | None, files: Iterable[Path], counts: Mapping[str, int],
                     note: str, end: bool = True, front: Sequence[Mapping[str, Any]] = ()) -> None:
        """Log the end-of-search summary on the parent run, its description: links to the best trial (a study of
        several objectives: to the trials of its Pareto front, `front`, each with trial_id and mlflow_run_id) and
        to the study's files, then `note`; and end it (or leave it running for the confirmation stage: `end`
        false)."""
        run, files = self.parent_run_id, list(files)
        self.log_metrics(run, {f"trials_{status}": n for status, n in counts.items()}, step=0)
        if best is not None:
            self.client.set_tag(run, "farm.best_trial_id", best["trial_id"])
            self.client.set_tag(run, "farm.best_run_id", best["mlflow_run_id"])
            self.log_metrics(run, {"best_nll_image": best["nll_image"]}, step=0)
            self.client.log_dict(run, best, "best_trial.json")
        if front:
            self.client.set_tag(run, "farm.pareto_trial_ids", ",".join(trial["trial_id"] for trial in front))
        self.log_files(run, files, "study")
        self.client.set_tag(run, MLFLOW_RUN_NOTE, f"{self._results_note(best, files, front)}\n\n{note}")
        if end:
            self.client.set_tag(run, STATUS_TAG, "finished")
            self.client.set_terminated(run, "FINISHED")

    @_journaled
    def finish_confirmation(self, stage_run_id: str, aggregates: Mapping[str, float], best: Mapping[str, Any] | None,
                            files: Iterable[Path]) -> None:
        """Log the confirmation stage's aggregates and table on its run, the table and the best confirmed
        configuration (`config_id` and metrics) on the parent run, and end both."""
        files = list(files)
        self.log_metrics(stage_run_id, aggregates, step=0)
        self.log_files(stage_run_id, files, "confirmation")
        self.log_files(self.parent_run_id, files, "study")
        if best is not None:
            self.client.set_tag(self.parent_run_id, "farm.confirmed_config_id", best["config_id"])
            self.log_metrics(self.parent_run_id, best, step=0)
        for run in dict.fromkeys((stage_run_id, self.parent_run_id)):
            self.client.set_tag(run, STATUS_TAG, "finished")
            self.client.set_terminated(run, "FINISHED")

    def _results_note(self, best: Mapping[str, Any] | None, files: Iterable[Path],
                      front: Sequence[Mapping[str, Any]] = ()) -> str:
        """Markdown: the best trial (or the Pareto front's) and the study's figures and table, linked to their
        pages in the UI."""
        best_text = (f"best trial [{best['trial_id']}]({self.ui_path(best['mlflow_run_id'])}), validation nll_image "
                     f"{float(best['nll_image']):.3f}" if best is not None else "no trial completed")
        if front:
            best_text = f"Pareto front of {len(front)} trial(s): " + ", ".join(
                f"[{trial['trial_id']}]({self.ui_path(trial['mlflow_run_id'])})" for trial in front)
        names = [Path(path).name for path in files]  # a replayed call passes the paths as text
        links = ", ".join(f"[{name}]({self.ui_path(self.parent_run_id, f'study/{name}')})" for name in names)
        return f"**Results**: {best_text}. Figures and table: {links}."

    @_journaled
    def interrupt_study(self, files: Iterable[Path]) -> None:
        """A signal stopped the study: log the table as it stands on the parent run and end it KILLED."""
        self.log_files(self.parent_run_id, files, "study")
        self.client.set_tag(self.parent_run_id, STATUS_TAG, "interrupted")
        self.client.set_terminated(self.parent_run_id, "KILLED")


def start(study_name: str, output: Path, uri: str, settings: Mapping[str, Any], files: Iterable[Path],
          note: str) -> Tracker:
    """Create the study's experiment (if new; marked as model training) and parent run, described by `note`
    (Markdown); remember them in <output>/tracking.json."""
    uri = stores.remember(uri)
    mlflow = client(stores.reveal(uri))
    location = None if uri.startswith(("http://", "https://")) else (output / "mlartifacts").resolve().as_uri()
    experiment_id = _retried(lambda: _experiment_id(mlflow, study_name, location))
    mlflow.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    parent = mlflow.create_run(experiment_id, run_name=study_name,
                               tags={STUDY_TAG: study_name, "farm.output": str(output.resolve()),
                                     MLFLOW_RUN_NOTE: note})
    tracker = Tracker(uri, experiment_id, parent.info.run_id, str((output / JOURNAL_FILE).resolve()))
    tracker.log_params(tracker.parent_run_id, settings)
    tracker.log_files(tracker.parent_run_id, files, "study_files")
    (output / STATE_FILE).write_text(json.dumps(asdict(tracker), indent=2))
    return tracker


def _experiment_id(mlflow: MlflowClient, name: str, location: str | None) -> str:
    """The experiment named `name`, created if there is none."""
    experiment = mlflow.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else mlflow.create_experiment(
        name, artifact_location=location)


def _retried(call: Callable[[], Result]) -> Result:
    """`call`, tried again after a short wait while the store fails: a server just started can be slow to
    answer its first requests. Only for calls that may run twice."""
    for attempt in range(ATTEMPTS - 1):
        try:
            return call()
        except Exception as error:  # MLflow raises many types (HTTP, SQL, its own) for one cause
            log.warning("tracking: %s; trying again", stores.scrub(str(error))[:300])
            time.sleep(BACKOFF_S * 2 ** attempt)
    return call()


def load(output: Path) -> Tracker:
    """The tracker a study's output folder remembers."""
    return Tracker(**json.loads((output / STATE_FILE).read_text()))


def reopen(output: Path) -> Tracker:
    """The tracker of an interrupted study (for --resume): same experiment, same parent run."""
    tracker = load(output)
    tracker.client.update_run(tracker.parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    return tracker


class TrackingCallback(Callback):
    """Driver side: the final status tag of each child run, and its last checkpoint as an artifact."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._end(trial, "pruned" if trial.last_result.get(PRUNED_KEY) else "completed")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._end(trial, "failed")

    def _end(self, trial: Trial, status: str) -> None:
        run_id = self.tracker.run_of(trial.trial_id)
        if run_id == "":
            return  # the trial never started
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as folder:
                self.tracker.log_files(run_id, [Path(folder)], "checkpoint")
        self.tracker.end_trial(run_id, status)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _tags(tags: Mapping[str, Any]) -> list[RunTag]:
    return [RunTag(key, str(value)) for key, value in tags.items()]


def _params(params: Mapping[str, Any]) -> list[Param]:
    return [Param(key, _param_text(value)) for key, value in params.items()]


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:MAX_PARAM_LENGTH]
