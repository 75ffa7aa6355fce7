"""Fixtures of the WSI tests: the two real SVS slides, the real H&E tiles and a small real-tissue cohort."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from wsi.cohort import build_cohort, load_pools

from .helpers import CMU, COHORT_SIZE, COHORT_SLIDES, TCGA


@pytest.fixture(scope="session")
def wsi_dir(shared_data: Path) -> Path:
    return shared_data / "wsi"


@pytest.fixture(scope="session")
def cmu_svs(wsi_dir: Path) -> Path:
    return wsi_dir / CMU


@pytest.fixture(scope="session")
def tcga_svs(wsi_dir: Path) -> Path:
    return wsi_dir / TCGA


@pytest.fixture(scope="session")
def he_tiles(shared_data: Path) -> Path:
    return shared_data / "he_tiles"


@pytest.fixture(scope="session")
def tissue_pools(shared_data: Path) -> dict:
    return load_pools(shared_data, piece_size=128)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory, tissue_pools: dict) -> tuple[Path, pd.DataFrame]:
    """Six pyramidal TIFF slides (3 positive, 3 negative) of real tissue, built once per session."""
    out = tmp_path_factory.mktemp("cohort")
    table = build_cohort(out, n_slides=COHORT_SLIDES, size=COHORT_SIZE, seed=0, pools=tissue_pools)
    return out, table
