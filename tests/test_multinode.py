"""A study across a real two-node Ray cluster on this machine: losing a node, losing the driver.

The head (`ray start --head`, 1 trial slot) and a second node joined with `ray start --address` (2 trial
slots, so it takes most trials) run with token authentication; trials request the custom resource
`farm_trial`. Both nodes write checkpoints to one folder, as NFS would serve a real cluster. Both tests share the
cluster, in the order they are written here. Every process the tests start is stopped by process group, even when
a test fails.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from ray import tune

from farm_sweep.sweep import tracking
from farm_sweep.sweep.results_table import read_table
from tests.processes import descendants, free_port, kill, stop, stop_tree

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
EPOCHS = 6
SNAPSHOT_S = 3  # > the driver's experiment-snapshot period (TUNE_GLOBAL_CHECKPOINT_S=1 in farm_sweep.sweep.runner)
FIXED = {"dataset": "binarized_mnist", "max_train_examples": 3000, "hidden_sizes": [128], "batch_size": 50,
         "epochs": EPOCHS, "num_orderings": 2}


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    head: subprocess.Popen
    worker: subprocess.Popen


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """One cluster for the module: the driver-loss test first, then the node-loss test, which stops the
    second node for good."""
    root = Path(tempfile.mkdtemp(prefix="farm-ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_ADDRESS": ""}
    address = f"127.0.0.1:{free_port()}"
    common = ["--block", "--num-cpus", "2", "--disable-usage-stats"]
    head = _start([RAY, "start", "--head", "--port", address.split(":")[1], "--include-dashboard", "false",
                   "--temp-dir", str(root / "ray"), "--resources", '{"farm_trial": 1}', *common], env, root / "head")
    worker = None
    try:
        _wait_for_nodes(address, env, 1)
        worker = _start([RAY, "start", "--address", address, "--resources", '{"farm_trial": 2}', *common],
                        env, root / "worker")
        _wait_for_nodes(address, env, 2)
        yield Cluster(address, env, head, worker)
    finally:
        for process in (worker, head):  # thrown away: a graceful `ray stop` would only cost time
            if process is not None:
                stop_tree(process, timeout=3)
        shutil.rmtree(root, ignore_errors=True)


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)


def _wait_for_nodes(address: str, env: dict[str, str], count: int, timeout: float = 120) -> None:
    probe = (f"import ray; ray.init(address='{address}', logging_level='ERROR'); "
             f"print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise AssertionError(f"the cluster did not reach {count} nodes in {timeout}s")


def write_study(folder: Path, name: str, lrs: list[float], **settings: object) -> Path:
    document = {"name": name, "fixed": FIXED, "pruner": "none", "trials": len(lrs), "max_failures": 3,
                "resources": {"cpus": 0.5, "custom": {"farm_trial": 1}},
                "search_space": {"parameters": {"lr": {"distribution": "categorical", "choices": lrs}}},
                "enqueue": [{"lr": lr} for lr in lrs], **settings}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def driver(cluster: Cluster, study: Path, output: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "farm_sweep.run", str(study), "--output", str(output), "--address", cluster.address,
         *extra], cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)


def results(output: Path, name: str) -> dict[str, list[dict]]:
    """Every result each trial reported so far (all attempts), by trial folder."""
    found = {}
    for path in (output / "ray" / name).glob("trial_*/result.json"):
        found[path.parent.name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return found


def on_node(pid: int, node: subprocess.Popen) -> bool:
    """Whether a trial process runs on the node started as `node` (both nodes share this machine's IP)."""
    return pid in descendants(node.pid)


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        stop(process)
    return output


def assert_one_run_per_trial(output: Path, name: str, trial_ids: list[str]) -> MlflowClient:
    client = MlflowClient(tracking.default_uri(output))
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    children = sorted(run.data.tags[tracking.TRIAL_TAG] for run in runs if tracking.TRIAL_TAG in run.data.tags)
    assert children == sorted(trial_ids)
    assert len(runs) == len(trial_ids) + 1  # and one parent run
    return client


def test_losing_the_driver_mid_study(cluster: Cluster, tmp_path: Path) -> None:
    study, output = write_study(tmp_path, "driverloss", [2e-3, 3e-3, 4e-3, 5e-3], max_concurrent_trials=2), \
        tmp_path / "out"
    run = driver(cluster, study, output)
    try:
        finished = _kill_when_one_trial_finished(run)
    finally:
        stop(run)
    resumed = driver(cluster, study, output, "--resume")
    printed = finish(resumed)
    assert resumed.returncode == 0, printed[-3000:]

    rows = read_table(output / "trials.csv")
    assert len(rows) == 4 and {row["status"] for row in rows} == {"completed"}
    analysis = tune.ExperimentAnalysis(str(output / "ray" / "driverloss"))
    for trial_id in finished:
        epochs = list(analysis.trial_dataframes[trial_id]["epoch"])
        assert epochs == list(range(1, EPOCHS + 1)), f"finished trial {trial_id} ran again: {epochs}"
    assert_one_run_per_trial(output, "driverloss", [row["trial_id"] for row in rows])


def _kill_when_one_trial_finished(process: subprocess.Popen, timeout: float = 300) -> list[str]:
    """SIGKILL the driver once its first trial has completed and the driver has recorded that (Tune's
    experiment snapshot, every second); the other trials are mid-run then."""
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    for line in process.stdout:
        if f"completed after epoch {EPOCHS}" in line:
            time.sleep(SNAPSHOT_S)
            kill(process)
            return [line.split()[0]]
        if time.monotonic() > deadline:
            break
    raise AssertionError("no trial completed before the deadline")


def test_losing_a_node_mid_study(cluster: Cluster, tmp_path: Path) -> None:
    study, output = write_study(tmp_path, "nodeloss", [2e-3, 3e-3, 4e-3]), tmp_path / "out"
    run = driver(cluster, study, output)
    try:
        at_loss = _stop_node_when_its_trials_are_mid_run(output, "nodeloss", cluster.worker)
        printed = finish(run)
    finally:
        stop(run)
    assert run.returncode == 0, printed[-3000:]
    interrupted = [trial for trial, seen in at_loss.items() if seen < EPOCHS]
    assert interrupted, f"no trial of the lost node was mid-run: {at_loss}"

    rows = read_table(output / "trials.csv")
    assert [(row["status"], row["epochs"]) for row in rows] == [("completed", str(EPOCHS))] * 3
    epochs = {trial: [r["epoch"] for r in reported] for trial, reported in results(output, "nodeloss").items()}
    for trial in interrupted:
        assert sorted(set(epochs[trial])) == list(range(1, EPOCHS + 1))
        assert len(epochs[trial]) - EPOCHS <= 1, f"{trial} repeated more than one epoch: {epochs[trial]}"
    client = assert_one_run_per_trial(output, "nodeloss", [row["trial_id"] for row in rows])
    for run_info in client.search_runs([client.get_experiment_by_name("nodeloss").experiment_id]):
        if tracking.TRIAL_TAG in run_info.data.tags:
            steps = [m.step for m in client.get_metric_history(run_info.info.run_id, "nll_image")]
            assert sorted(steps) == list(range(1, EPOCHS + 1))


def _stop_node_when_its_trials_are_mid_run(output: Path, name: str, node: subprocess.Popen,
                                           timeout: float = 300) -> dict[str, int]:
    """Stop `node` once a trial running on it has reported epoch 2; returns that node's trials' epochs then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = {trial: reported[-1] for trial, reported in results(output, name).items()
                if reported and on_node(reported[-1]["pid"], node)}
        if any(2 <= last["epoch"] < EPOCHS for last in mine.values()):
            stop_tree(node)
            return {trial: last["epoch"] for trial, last in mine.items()}
        time.sleep(0.1)
    raise AssertionError("no trial ran on the second node")
