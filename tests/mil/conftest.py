"""Shared settings and session fixtures of the MIL tests: one small real-tissue cohort, tiled once, bagged once,
encoded once (the feature cache is shared by every test, including the bundle runs)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from mil.bags import Bag, BagDirectory
from mil.features import FeatureExtractor
from mil.real_bags import make_real_bags
from wsi.cohort import build_cohort, load_pools
from wsi.workflows import TilingWorkflow

COHORT_SLIDES = 10
COHORT_SIZE = (1024, 768)  # level 0; 32 px patches at level 1 (2 µm/px) give ~15-30 patches per slide
PATCH_SIZE, LEVEL = 32, 1


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


@pytest.fixture(scope="session")
def mil_cohort(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> tuple[Path, pd.DataFrame]:
    """Ten pyramidal TIFF slides of real tissue (5 positive with a region of the other tissue source, 5 negative),
    split 6 train / 4 test by ``cohort.csv``."""
    out = tmp_path_factory.mktemp("mil_cohort")
    pools = load_pools(shared_data, piece_size=128)
    table = build_cohort(out, n_slides=COHORT_SLIDES, size=COHORT_SIZE, seed=0, pools=pools)
    return out, table


@pytest.fixture(scope="session")
def mil_tiling(tmp_path_factory: pytest.TempPathFactory, mil_cohort) -> Path:
    root, _ = mil_cohort
    out = tmp_path_factory.mktemp("mil_tiling")
    TilingWorkflow(root / "cohort.csv", out, patch_size=PATCH_SIZE, level=LEVEL, thumbnail_size=256,
                   progress=False).run()
    return out


@pytest.fixture(scope="session")
def real_bags(tmp_path_factory: pytest.TempPathFactory, mil_tiling: Path) -> BagDirectory:
    """Real bags of all ten slides."""
    return make_real_bags(mil_tiling, tmp_path_factory.mktemp("real_bags"), progress=False)


@pytest.fixture(scope="session")
def train_bag_dir(tmp_path_factory: pytest.TempPathFactory, mil_tiling: Path) -> Path:
    """Real bags of the six training slides, as a bag directory (what --train_bags takes)."""
    out = tmp_path_factory.mktemp("train_bags")
    make_real_bags(mil_tiling, out, split="train", progress=False)
    return out / "bags"


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feature_cache")


@pytest.fixture(scope="session")
def feature_bags(real_bags: BagDirectory, feature_cache: Path) -> list[Bag]:
    """Default-encoder features of all ten real bags (cached for the other tests)."""
    torch.set_num_threads(1)
    return FeatureExtractor(cache_dir=feature_cache, device="cpu", progress=False).extract(real_bags)
