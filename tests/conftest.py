"""Shared pytest fixtures (helper functions and constants live in helpers.py)."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def one_thread():
    """One torch thread for a test of tiny networks or of CLI runs in subprocesses (which run on one thread
    too): on a busy 2-core machine two threads can be tens of times slower, and one thread everywhere keeps
    the kernels' summation order the same in parent and children."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
