"""Shared fixtures: the real data in ../shared/data (or $MONAI_DISTILL_SHARED_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
