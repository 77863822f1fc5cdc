"""GPU scheduling without a GPU: a real local Ray started with 2 logical GPUs (and 8 CPUs) runs a study whose
trials ask for `resources.gpus: 0.25`. Ray packs four trials on each GPU and gives each trial the
CUDA_VISIBLE_DEVICES of its GPU; `device: auto` then finds no usable CUDA here and trains on the CPU, saying
why. Tiny on purpose: digits, one hidden layer of 8, one epoch on 100 images.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
import yaml
from ray import cloudpickle, tune

from farm_sweep.sweep.experiment import Trainable
from farm_sweep.sweep.runner import run_study
from farm_sweep.sweep.study import load_study
from farm_sweep.sweep.trial import (
    CUDA_TAG,
    DEVICE_REASON_TAG,
    DEVICE_TAG,
    THREADS_TAG,
    TrialContext,
    run_trial,
    use_granted_cpus,
)
from farm_sweep.training.device import resolve_device
from tests.test_sweep import child_runs

GPUS, TRIALS_PER_GPU = 2, 4
TRIALS = GPUS * TRIALS_PER_GPU
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


@pytest.fixture(scope="module")
def logical_gpus() -> Iterator[None]:
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module
    ray.shutdown()  # the tests' shared Ray (conftest), if another module started it
    ray.init(num_cpus=TRIALS, num_gpus=GPUS, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    yield
    ray.shutdown()


def all_together(arrivals: Path, timeout_s: float) -> Trainable:
    """run_trial, once every trial of the study has started or `timeout_s` has passed: the trials then run at
    the same time exactly when Ray lets them, so their overlap in Tune's records shows what Ray allowed."""

    def wait_for_the_others(config: dict[str, Any], context: TrialContext) -> None:
        (arrivals / tune.get_context().get_trial_id()).touch()
        deadline = time.monotonic() + timeout_s
        while len(list(arrivals.iterdir())) < TRIALS and time.monotonic() < deadline:
            time.sleep(0.05)
        run_trial(config, context)

    return wait_for_the_others


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) spans that hold one moment in common."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], -e[1]))
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


@NO_CUDA
def test_a_quarter_gpu_packs_four_trials_per_gpu_each_with_its_own_gpu(logical_gpus: None, tmp_path: Path) -> None:
    document = {"name": "gpu_packing", "trials": TRIALS, "max_concurrent_trials": TRIALS, "pruner": "none",
                "sampler": "random", "resources": {"cpus": 1, "gpus": 0.25},
                "fixed": {"dataset": "digits", "hidden_sizes": [8], "epochs": 1, "batch_size": 50,
                          "max_train_examples": 100},
                "search_space": {"parameters": {"lr": {"distribution": "categorical", "choices": [1e-2, 2e-2]}}}}
    path = tmp_path / "gpu_packing.yaml"
    path.write_text(yaml.safe_dump(document))
    arrivals = tmp_path / "arrivals"
    arrivals.mkdir()
    output = tmp_path / "out"
    rows = run_study(load_study(path), output, trainable=all_together(arrivals, timeout_s=40))
    assert [row["status"] for row in rows] == ["completed"] * TRIALS

    trials = tune.ExperimentAnalysis(str(output / "ray" / "gpu_packing")).trials
    for trial in trials:  # what Tune asked Ray for
        assert trial.placement_group_factory.required_resources == {"CPU": 1.0, "GPU": 0.25}
    runs = {run.data.tags["farm.trial_id"]: run.data.tags for run in child_runs(output, "gpu_packing")}
    gpu_of = {trial_id: tags[CUDA_TAG] for trial_id, tags in runs.items()}
    assert Counter(gpu_of.values()) == {str(gpu): TRIALS_PER_GPU for gpu in range(GPUS)}

    spans = {t.trial_id: (t.run_metadata.start_time, t.run_metadata.last_result_time) for t in trials}
    assert most_at_once(list(spans.values())) == TRIALS
    for gpu in set(gpu_of.values()):
        assert most_at_once([span for trial_id, span in spans.items() if gpu_of[trial_id] == gpu]) == TRIALS_PER_GPU

    for trial_id, tags in runs.items():  # device: auto, with a GPU named but no CUDA here
        assert tags[THREADS_TAG] == "1"  # resources.cpus
        assert tags[DEVICE_TAG] == "cpu"
        assert tags[DEVICE_REASON_TAG].startswith("device auto: training on the CPU, as ")
        assert tags[DEVICE_REASON_TAG].endswith(f"(CUDA_VISIBLE_DEVICES={gpu_of[trial_id]})")
    worker_logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    logged = [line for log in worker_logs.glob("worker-*.err") for line in log.read_text().splitlines()
              if "device auto: training on the CPU" in line]
    assert len(logged) == TRIALS  # each trial warns once, in its Ray worker's log


@NO_CUDA
def test_auto_warns_only_when_a_gpu_was_named(monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="farm_sweep.training.device")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert [(record.levelname, record.getMessage().endswith(suffix)) for record, suffix in
            zip(caplog.records, ("(CUDA_VISIBLE_DEVICES=1)", "(CUDA_VISIBLE_DEVICES=unset)"), strict=True)] == [
        ("WARNING", True), ("INFO", True)]


def threads_of_a_trial() -> int:
    """torch's thread count in a trial's process once the trial has taken its CPUs."""
    use_granted_cpus()
    return torch.get_num_threads()


@pytest.mark.parametrize("cpus", [1, 3])
def test_a_trial_runs_torch_on_as_many_threads_as_cpus_it_was_granted(logical_gpus: None, cpus: int) -> None:
    """Whatever OMP_NUM_THREADS the process was started with (a driver started with OMP_NUM_THREADS=1 passes it on)."""
    task = ray.remote(num_cpus=cpus, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})(threads_of_a_trial)
    assert ray.get(task.remote()) == cpus
