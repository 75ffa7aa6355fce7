"""Shared settings for the MIL tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """Run MIL tests on one intra-op thread, restoring the previous count afterwards.

    MIL tensors are tiny, so threads buy nothing, and on a shared 2-core machine OpenMP's spinning workers made a
    small TransMIL step ~90x slower (0.53 s instead of 6 ms) than with one thread.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
