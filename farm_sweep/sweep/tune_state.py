"""What `--resume` trusts: Tune's experiment state, checked against checksums this project recorded.

`Tuner.restore` unpickles files from the output folder (tuner.pkl, the searcher's state, each trial's
params.pkl and error.pkl, and the experiment state JSON, which embeds pickles), and a pickle runs code. So
the run records the sha256 of every such file Tune writes, in `<output>/tune_state.json` (outside Tune's
files), and `verify` refuses to resume unless every one of them matches a checksum recorded for its path.

When: after the Tuner is created (tuner.pkl), at every snapshot of the experiment state (Tune snapshots
every second; `StateRecorder`, a Tune callback, hashes the snapshot in the driver's staging folder just after
Tune wrote it and before Tune copies it into the output folder), and when the run ends or is interrupted.
A run killed while Tune copied a snapshot can leave a half-copied file that matches nothing; the last few
checksums of each path are kept, so a copy that completed is accepted whichever snapshot it was. A study's
second experiment (its confirmation stage) is recorded in the same file, its paths prefixed by a scope
(`confirmation/`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ray.tune.callback import Callback
from ray.tune.experiment import Trial

RECORD_FILE = "tune_state.json"
KEPT = 8  # checksums kept per path
_PATTERNS = ("*.pkl", "experiment_state-*.json", "search_gen_state-*.json",  # what Tune.restore deserializes
             "basic-variant-state-*.json")  # the searcher state of an experiment without Optuna: a pickle too


class UntrustedState(ValueError):
    """Tune state in the output folder that this project's run did not record."""


def state_files(experiment: Path) -> list[Path]:
    """The files under Tune's experiment folder that a restore deserializes."""
    return sorted({path for pattern in _PATTERNS for path in experiment.rglob(pattern) if path.is_file()})


def record(experiment: Path, output: Path, scope: str = "") -> None:
    """Add the checksums of the state files under `experiment` (Tune's folder in `output`, or the driver's
    staging copy of it) to `output`'s record, each under its path in the experiment prefixed by `scope` (one
    scope per experiment of the study: "" for the search)."""
    recorded = _load(output)
    changed = False
    for path in state_files(experiment):
        name = scope + path.relative_to(experiment).as_posix()
        digest = _sha256(path)
        known = recorded.setdefault(name, [])
        if digest not in known:
            recorded[name] = [*known, digest][-KEPT:]
            changed = True
    if changed:
        _save(output, recorded)


def verify(experiment: Path, output: Path, scope: str = "") -> None:
    """UntrustedState unless every state file under `experiment` has a checksum recorded in `output` under
    `scope`."""
    recorded = _load(output)
    if not recorded:
        raise UntrustedState(f"{output / RECORD_FILE} is missing, so nothing vouches for Tune's state in {experiment}")
    for path in state_files(experiment):
        name = scope + path.relative_to(experiment).as_posix()
        if _sha256(path) not in recorded.get(name, []):
            raise UntrustedState(f"{path} was not written by this study's run (its sha256 is not among those "
                                 f"recorded in {output / RECORD_FILE})")


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _load(output: Path) -> dict[str, list[str]]:
    try:
        recorded = json.loads((output / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _save(output: Path, recorded: dict[str, list[str]]) -> None:
    staging = output / f".{RECORD_FILE}.tmp"
    staging.write_text(json.dumps(recorded, indent=1, sort_keys=True))
    os.replace(staging, output / RECORD_FILE)


class StateRecorder(Callback):
    """Records each experiment snapshot as Tune writes it (see the module docstring)."""

    def __init__(self, output: Path, scope: str = "") -> None:
        self.output, self.scope = output, scope
        self._staging: Path | None = None

    def on_step_begin(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if trials:  # each run (and --resume) stages in a folder of its own
            self._staging = Path(trials[0].local_path).parent  # the driver's staging copy of the experiment

    def get_state(self) -> dict | None:
        """Tune asks callbacks for their state right after writing its own snapshot to the staging folder and
        before copying it to the output folder: the moment to record the snapshot. Stateless: returns None."""
        if self._staging is not None:
            record(self._staging, self.output, self.scope)
        return None
