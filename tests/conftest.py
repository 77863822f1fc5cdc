"""Fixtures shared by test modules, and the data folder: `../shared/data` beside the checkout unless
FARM_DATA_DIR says otherwise (as `make test` does), so plain `pytest` in a checkout finds the datasets."""

import os
from pathlib import Path

import pytest
import torch

from tests.processes import local_ray

# The files that take minutes (real studies killed and resumed, clusters, database servers), slowest first.
SLOW_FILES = ("test_reliability.py", "test_multinode.py", "test_ray_up.py", "test_confirmation.py",
              "test_postgres.py", "test_gpu_scheduling.py", "test_export_pixelcnn.py", "test_mlflow_model.py")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not os.environ.get("FARM_DATA_DIR") and SHARED_DATA.is_dir():  # unset or empty
    os.environ["FARM_DATA_DIR"] = str(SHARED_DATA)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow files first (each keeping its own order): `make test` runs `pytest -n 2 --dist loadfile`, which
    hands whole files to whichever process is free in this order, so the long ones start at once and the short
    ones fill in after, instead of one long file running alone at the end."""
    rank = {name: index for index, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))


@pytest.fixture(scope="module")
def ray_address() -> str:
    """The address of a local Ray (2 CPUs) in this process, for the module's studies and the drivers it joins
    to it (`--address`). Started once and kept for the modules after (each start costs seconds; Ray stops it at
    exit); a module that needs a Ray of its own shuts this one down first."""
    return local_ray()


@pytest.fixture
def one_thread():
    """Tiny convolutions run faster on one thread than on cores shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of one finished real study, shared by the tests of what users do with a study's results
    (MLflow Models, registry and serving, the MLflow UI, Optuna's tools): 2 trials of one epoch on digits, each
    with an inpainting figure. Tests may add to its MLflow store (log, register), never change what is there."""
    import yaml

    from farm_sweep.sweep.runner import run_study
    from farm_sweep.sweep.study import load_study

    folder = tmp_path_factory.mktemp("tiny_study")
    document = {
        "name": "tiny", "trials": 2, "pruner": "none", "max_concurrent_trials": 2, "resources": {"cpus": 1},
        "fixed": {"dataset": "digits", "hidden_sizes": [32], "epochs": 1, "num_orderings": 2},
        "search_space": {"parameters": {"lr": {"distribution": "categorical", "choices": [0.01, 0.03]}}},
        "enqueue": [{"lr": 0.01}, {"lr": 0.03}],
        "evaluation": {"inpaint": {"cases": ["average"], "fills": ["evidence_weighted"], "num_occlusions": 2,
                                   "images_per_occlusion": 4}, "sampling": None}}
    (folder / "tiny.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    local_ray()
    run_study(load_study(folder / "tiny.yaml"), folder / "out")
    return folder / "out"
