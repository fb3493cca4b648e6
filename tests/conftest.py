"""Fixtures shared across the test folders."""

import pytest
import torch


@pytest.fixture
def single_torch_thread():
    """Micro models run fastest on one thread, and stay fast while other jobs share the machine's cores (torch's
    worker threads busy-wait). Folders of micro models use it for every test (`usefixtures` or an autouse fixture)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
