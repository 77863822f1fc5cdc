"""ray_cluster.yaml and the documented on-premises variant pass Ray's own cluster-config validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def local_variant() -> dict:
    """The `provider: local` YAML block of docs/cluster.md."""
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "cluster.md").read_text(), flags=re.S)
    (block,) = [b for b in blocks if "type: local" in b]
    return yaml.safe_load(block)


@pytest.mark.parametrize("config", [yaml.safe_load((ROOT / "ray_cluster.yaml").read_text()), local_variant()],
                         ids=["aws", "local"])
def test_ray_accepts_the_cluster_config(config: dict) -> None:
    prepared = prepare_config(config)
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_cloud_cluster_has_cpu_head_gpu_workers_and_the_tracking_server() -> None:
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))
    assert any("pip install" in command and "farm-sweep" in command for command in config["setup_commands"])
    (server,) = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    assert "--host" in server and "0.0.0.0" not in server
