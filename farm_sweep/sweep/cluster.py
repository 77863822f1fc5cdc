"""The Ray a study runs on: an embedded one on this machine, or a running cluster (`--address`), and
whether a trial's resource request can be granted by one of its live nodes. (The embedded Ray's address,
127.0.0.1, is set before Ray is imported: farm_sweep.sweep.command_start.)
"""

from __future__ import annotations

import logging
import os
from typing import Any


class ResourcesUnavailable(ValueError):
    """A trial's resource request that no node of the cluster can grant; `field` names the study's key."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


def connect(address: str | None) -> None:
    """Start the embedded Ray (address None) or join the cluster at `address`, unless Ray already runs."""
    import ray

    # --resume restarts from Tune's last experiment snapshot: take one every second (default: every 10s or
    # more), so a killed driver loses at most a second of trial bookkeeping; and do not warn about it.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)


def check_resources(cpus: float, gpus: float, custom: dict[str, float]) -> None:
    """ResourcesUnavailable when no live node can run one trial: a trial asking for more CPUs, GPUs or custom
    resources than the largest node has waits until a node that has them joins (forever, on a cluster that
    cannot grow). GPUs count only on a cluster with GPUs (elsewhere trials run on the CPU)."""
    nodes = _node_resources()
    wanted = {"CPU": ("resources.cpus", cpus), **{name: (f"resources.custom.{name}", amount)
                                                  for name, amount in custom.items()}}
    if any(node.get("GPU", 0) for node in nodes):
        wanted["GPU"] = ("resources.gpus", gpus)
    for resource, (field, amount) in wanted.items():
        largest = max((node.get(resource, 0) for node in nodes), default=0)
        if amount > largest:
            raise ResourcesUnavailable(field, _shortage(resource, amount, largest, nodes))


def _node_resources() -> list[dict[str, Any]]:
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def _shortage(resource: str, amount: float, largest: float, nodes: list[dict[str, Any]]) -> str:
    if largest == 0:
        known = sorted({name for node in nodes for name in node if not name.startswith("node:")})
        return (f"no node of the Ray cluster has the resource {resource!r} (they have: {', '.join(known)}); "
                f"start a node with `ray start --resources '{{\"{resource}\": 1}}'` and run with --address, or "
                "remove it from the study")
    return (f"{amount:g} per trial, but the largest node of the Ray cluster has {largest:g}, so no trial could "
            f"ever start; ask for at most {largest:g}")
