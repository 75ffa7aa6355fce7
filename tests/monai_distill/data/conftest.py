"""Fixtures of the data tests: real MedMNIST splits and CT/MR volumes from the shared data folder.

``shared_data`` and ``medmnist_dir`` come from ``tests/conftest.py``. Loaded splits are session-scoped because
several test files read the same ones; tests must treat them as read-only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monai_distill.data import RealDataset, load_medmnist


@pytest.fixture(scope="session")
def volumes_dir(shared_data: Path) -> Path:
    return shared_data / "volumes"


@pytest.fixture(scope="session")
def breast_train(medmnist_dir: Path) -> RealDataset:
    return load_medmnist("breastmnist", "train", medmnist_dir)


@pytest.fixture(scope="session")
def adrenal_train(medmnist_dir: Path) -> RealDataset:
    return load_medmnist("adrenalmnist3d", "train", medmnist_dir)


@pytest.fixture(scope="session")
def breast_arrays(medmnist_dir: Path) -> dict[str, np.ndarray]:
    """All six arrays of the real BreastMNIST file, to write modified copies into tmp_path."""
    with np.load(medmnist_dir / "breastmnist.npz") as npz:
        return {k: npz[k] for k in npz.files}
