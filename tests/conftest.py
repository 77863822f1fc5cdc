"""Fixtures shared by test modules."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny convolutions run faster on one thread than on cores shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
