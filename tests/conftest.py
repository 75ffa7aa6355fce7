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


@pytest.fixture
def log_lines():
    """Messages logged under ``monai_distill`` during the test, whatever logging config an in-process bundle run
    applied before (bundle logging.conf files set ``propagate=0``, so pytest's ``caplog`` would see nothing)."""
    import logging

    lines: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = _Collect(level=logging.INFO)
    loggers = [logging.getLogger("monai_distill"), logging.getLogger("monai_distill.progress")]
    saved = [(lg.level, lg.disabled) for lg in loggers]
    for lg in loggers:
        lg.disabled = False
        lg.setLevel(logging.INFO)
    loggers[0].addHandler(handler)
    yield lines
    loggers[0].removeHandler(handler)
    for lg, (level, disabled) in zip(loggers, saved):
        lg.setLevel(level)
        lg.disabled = disabled
