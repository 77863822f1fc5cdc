"""Fixtures shared by test modules, and the data folder: `../shared/data` beside the checkout unless
FARM_DATA_DIR says otherwise (as `make test` does), so plain `pytest` in a checkout finds the datasets."""

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if "FARM_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["FARM_DATA_DIR"] = str(SHARED_DATA)


@pytest.fixture
def one_thread():
    """Tiny convolutions run faster on one thread than on cores shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
