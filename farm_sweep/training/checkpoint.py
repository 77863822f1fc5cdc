"""Pickle-free checkpoints: safetensors for tensors, JSON for everything else, a sha256 manifest.

A checkpoint is a folder `epoch_NNNN/` holding
  model.safetensors      the model's state_dict
  optimizer.safetensors  every tensor of the optimizer state, keyed "state.<param>.<name>"
  optimizer.json         the optimizer's non-tensor state (param groups, scalar entries)
  state.json             the config, the epoch and the metric history
  manifest.json          sha256 of each file above
It is written to a temporary folder and renamed into place, so a reader sees all of it or none.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from farm_sweep.integrity import file_sha256

log = logging.getLogger(__name__)

FILES = ("model.safetensors", "optimizer.safetensors", "optimizer.json", "state.json")
BEST = "best_model.safetensors"  # with early stopping: the best epoch's weights, when it is not this epoch
KEEP = 2


class CheckpointError(RuntimeError):
    """A checkpoint folder that is missing files or whose contents do not match its manifest."""


def save(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
         best: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `folder/epoch_NNNN` atomically (NNNN = state["epoch"]), with `best` weights if given; keep the
    newest KEEP checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"epoch_{state['epoch']:04d}"
    staging = folder / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              staging / "model.safetensors")
    tensors, rest = _split_optimizer_state(optimizer.state_dict())
    save_file(tensors, staging / "optimizer.safetensors")
    _write_json(staging / "optimizer.json", rest)
    _write_json(staging / "state.json", state)
    files = FILES
    if best is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in best.items()}, staging / BEST)
        files = (*FILES, BEST)
    _write_json(staging / "manifest.json", {name: file_sha256(staging / name) for name in files})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    for old in checkpoints(folder)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoint folders under `folder`, oldest first."""
    return sorted(p for p in Path(folder).glob("epoch_*") if p.is_dir())


def verify(checkpoint: Path) -> None:
    """Raise CheckpointError unless every file is present and matches the manifest."""
    manifest_path = checkpoint / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({error})") from error
    for name in (*FILES, BEST) if BEST in manifest else FILES:
        path = checkpoint / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from the checkpoint")
        if file_sha256(path) != manifest.get(name):
            raise CheckpointError(f"{path}: sha256 does not match the manifest (truncated or altered)")


def latest_valid(folder: Path) -> Path | None:
    """The newest checkpoint that verifies; broken newer ones are skipped with a warning."""
    for checkpoint in reversed(checkpoints(folder)):
        try:
            verify(checkpoint)
            return checkpoint
        except CheckpointError as error:
            log.warning("skipping corrupt checkpoint: %s", error)
    return None


def load(checkpoint: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Verify, then restore model (and optimizer) in place; returns state.json."""
    verify(checkpoint)
    model.load_state_dict(load_file(checkpoint / "model.safetensors"))
    if optimizer is not None:
        rest = json.loads((checkpoint / "optimizer.json").read_text())
        optimizer.load_state_dict(_join_optimizer_state(load_file(checkpoint / "optimizer.safetensors"), rest))
    return read_state(checkpoint)


def load_best(checkpoint: Path) -> dict[str, torch.Tensor] | None:
    """The best epoch's weights stored beside a verified checkpoint's own, if it has them."""
    return load_file(checkpoint / BEST) if (checkpoint / BEST).is_file() else None


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "state.json").read_text())


def _split_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for param, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param}.{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, param, name = key.split(".", 2)
        state.setdefault(int(param), {})[name] = value
    for key, value in rest["scalars"].items():
        param, name = key.split(".", 1)
        state.setdefault(int(param), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True))


