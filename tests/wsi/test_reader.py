"""Slide facts through MONAI's WSIReader on the two real SVS files and a cohort TIFF, and unreadable inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wsi.reader import Slide, SlideInfo, SlideReadError


def test_cmu_jpeg_svs_facts(cmu_svs: Path) -> None:
    with Slide(cmu_svs) as s:
        info = s.info
        assert info.backend == "openslide" and info.vendor == "aperio"
        assert info.level_count == 1 and info.dimensions == ((2220, 2967),)
        assert info.mpp == pytest.approx((0.499, 0.499))
        assert info.objective_power == 20
        region = s.read_region(1000, 1500, 64, 32)
        assert region.shape == (32, 64, 3) and region.dtype == np.uint8
        assert s.associated_thumbnail() is not None


def test_tcga_jpeg2000_svs_facts(tcga_svs: Path) -> None:
    with Slide(tcga_svs) as s:
        info = s.info
        assert info.level_count == 2
        assert info.dimensions == ((4443, 3567), (2221, 1783))
        assert info.downsamples[1] == pytest.approx(2.0, abs=1e-2)
        assert info.mpp is None and info.objective_power is None  # the fixture has no mpp/objective metadata
        assert info.level_mpp(1) is None
        patch = s.read_region(2000, 1500, 32, 32, level=1)  # JPEG2000 tiles decode
        assert patch.shape == (32, 32, 3) and 0 < patch.mean() < 250


def test_info_roundtrip(tcga_svs: Path) -> None:
    with Slide(tcga_svs) as s:
        assert SlideInfo.from_dict(s.info.to_dict()) == s.info


def test_tifffile_backend_reads_cohort_levels_like_openslide(cohort: tuple[Path, pd.DataFrame]) -> None:
    root, table = cohort
    path = root / table.slide_path[0]
    with Slide(path) as a, Slide(path, backend="tifffile") as b:
        assert a.info.vendor == "generic-tiff"
        assert a.info.level_count == b.info.level_count == 3
        assert a.info.dimensions == b.info.dimensions
        assert a.info.mpp == b.info.mpp == pytest.approx((0.5, 0.5))
        ra, rb = a.read_region(256, 128, 64, 64, level=1), b.read_region(256, 128, 64, 64, level=1)
        assert np.abs(ra.astype(int) - rb.astype(int)).mean() < 2  # same JPEG tiles, two decoders


def test_tifffile_backend_on_svs_keeps_only_true_levels(tcga_svs: Path) -> None:
    """MONAI's tifffile backend counts pages; SVS page 1 is a thumbnail, so only level 0 is trustworthy."""
    with pytest.warns(UserWarning, match="openslide"), Slide(tcga_svs, backend="tifffile") as s:
        assert s.info.level_count == 1 and s.info.dimensions[0] == (4443, 3567)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.svs"):
        Slide(tmp_path / "nope.svs")


def test_png_renamed_svs(tmp_path: Path, he_tiles: Path) -> None:
    fake = tmp_path / "fake.svs"
    shutil.copy(he_tiles / "histolab_no-tissue.png", fake)
    with pytest.raises(SlideReadError, match=r"fake\.svs"):
        Slide(fake)


def test_unknown_backend(cmu_svs: Path) -> None:
    with pytest.raises(ValueError, match="openslide, tifffile, cucim"):
        Slide(cmu_svs, backend="bioformats")
