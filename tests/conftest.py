"""Shared fixtures: the real data in ../shared/data (or $MONAI_DISTILL_SHARED_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MONAI_DISTILL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()
MEDMNIST_DIR = SHARED_DATA / "medmnist"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA}; set MONAI_DISTILL_SHARED_DATA.")
    return SHARED_DATA


@pytest.fixture(scope="session")
def medmnist_dir(shared_data: Path) -> Path:
    return shared_data / "medmnist"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def one_thread():
    """One intra-op thread for the test, restored afterwards: small networks run as fast on one thread, and far
    faster on a loaded 2-core machine, where OpenMP's spinning workers slow them down many times."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
