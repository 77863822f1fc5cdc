"""ray_cluster.yaml and ray_cluster_local.yaml pass Ray's own cluster-config validation, and both set up nodes and
start the head's stores with the same scripts (tests/test_ray_up.py runs them for real)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILES = {"aws": ROOT / "ray_cluster.yaml", "local": ROOT / "ray_cluster_local.yaml"}
SETUP, START_STORES = "bash ~/farm-sweep/cluster/setup_node.sh", "bash ~/farm-sweep/cluster/start_stores.sh"


def load(name: str) -> dict:
    return yaml.safe_load(CLUSTER_FILES[name].read_text())


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_ray_accepts_the_cluster_config(name: str) -> None:
    prepared = prepare_config(load(name))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_nodes_are_set_up_and_the_stores_started_by_the_shipped_scripts(name: str) -> None:
    config = load(name)
    assert SETUP in config["setup_commands"]
    head = config["head_start_ray_commands"]
    assert head[-1] == START_STORES and any("ray start --head" in command for command in head[:-1])
    assert {path: source for path, source in config["file_mounts"].items()} == {"~/farm-sweep": "."}


def test_cloud_cluster_has_cpu_head_gpu_workers_and_postgresql_on_the_head() -> None:
    config = load("aws")
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith(("g", "p"))
    assert any("install -y postgresql" in command for command in config["head_setup_commands"])


def test_the_stores_are_postgresql_on_loopback_and_mlflow_on_a_private_address() -> None:
    script = (ROOT / "cluster" / "start_stores.sh").read_text()
    assert "listen_addresses=127.0.0.1" in script and "--auth=scram-sha-256" in script
    assert "sqlite" not in script and "0.0.0.0" not in script
    assert 'mlflow server --host "$mlflow_host"' in script and "--backend-store-uri \"$database_url/mlflow\"" in script
