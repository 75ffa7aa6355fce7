"""Level / mpp selection on a cohort slide with known mpp (0.5 µm/px, levels 1, 1/4, 1/16), grid maths, grid files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wsi.datasets import SlidePatchDataset
from wsi.grid import PatchGrid, grid_positions, patch_tissue_fractions, resolve_patch_spec
from wsi.reader import Slide
from wsi.tiling import TilingConfig, tile_slide


@pytest.fixture(scope="module")
def cohort_slide(cohort: tuple[Path, pd.DataFrame]) -> Path:
    root, table = cohort
    return root / table.slide_path[0]


@pytest.fixture(scope="module")
def info(cohort_slide: Path):
    with Slide(cohort_slide) as s:
        return s.info


@pytest.mark.parametrize(
    ("kwargs", "level", "read_size", "footprint", "mpp"),
    [
        ({}, 0, 64, 64, 0.5),  # default: level 0
        ({"level": 1}, 1, 64, 256, 2.0),  # a stored level: footprint grows by its downsample
        ({"mpp": 2.0}, 1, 64, 256, 2.0),  # an mpp that is stored: read as is
        ({"mpp": 2.1}, 1, 64, 256, 2.0),  # within the 10% tolerance: still no resize
        ({"mpp": 1.0}, 0, 128, 128, 1.0),  # not stored: read level 0 at twice the size, resize
        ({"mpp": 4.0}, 1, 128, 512, 4.0),  # between levels 1 and 2: read the finer one and resize
        ({"mpp": 8.0}, 2, 64, 1024, 8.0),
    ],
)
def test_resolve_patch_spec(info, kwargs, level, read_size, footprint, mpp) -> None:
    spec = resolve_patch_spec(info, 64, **kwargs)
    assert (spec.level, spec.read_size, spec.footprint) == (level, read_size, footprint)
    assert spec.mpp == pytest.approx(mpp)
    assert spec.stride == spec.footprint  # default stride: no overlap


def test_stride_is_in_patch_pixels(info) -> None:
    assert resolve_patch_spec(info, 64, mpp=1.0, stride=32).stride == 64  # 32 px at 1 µm/px = 64 level-0 px


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mpp": 0.25}, "finer than level 0"),
        ({"level": 3}, "levels 0..2"),
        ({"level": 1, "mpp": 2.0}, "not both"),
        ({"mpp": -1.0}, "positive"),
    ],
)
def test_impossible_requests(info, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_patch_spec(info, 64, **kwargs)


def test_mpp_on_slide_without_mpp(tcga_svs: Path) -> None:
    with Slide(tcga_svs) as s, pytest.raises(ValueError, match=r"no microns-per-pixel.*--level"):
        resolve_patch_spec(s.info, 64, mpp=1.0)


def test_patches_at_unstored_mpp_match_resized_level0(cohort_slide: Path) -> None:
    """A 1.0 µm/px patch is level 0 read at 2x the size and halved; compare with doing that by hand."""
    tiling = tile_slide(cohort_slide, TilingConfig(patch_size=64, mpp=1.0))
    grid = tiling.grid
    assert grid.spec.level == 0 and grid.spec.read_size == 128 and len(grid) > 10
    ds = SlidePatchDataset([grid], include_label=False)
    with Slide(cohort_slide) as s:
        for i in (0, len(grid) // 2, len(grid) - 1):
            x, y = grid.coords[i]
            ref = Image.fromarray(s.read_region(int(x), int(y), 128, 128, 0)).resize((64, 64), Image.BILINEAR)
            got = ds[i]["image"]
            assert tuple(got.shape) == (3, 64, 64)
            diff = np.abs(np.moveaxis(got.numpy(), 0, -1).astype(int) - np.asarray(ref).astype(int))
            assert diff.mean() < 1.0
    ds.close()


def test_mpp_grid_covers_same_tissue_as_level_grid(cohort_slide: Path) -> None:
    """mpp 2.0 is stored as level 1: both requests give the same grid."""
    a = tile_slide(cohort_slide, TilingConfig(patch_size=32, level=1)).grid
    b = tile_slide(cohort_slide, TilingConfig(patch_size=32, mpp=2.0)).grid
    np.testing.assert_array_equal(a.coords, b.coords)


def test_grid_positions_and_fractions() -> None:
    pos = grid_positions(100, 60, footprint=20, stride=20)
    assert len(pos) == 5 * 3 and tuple(pos[1]) == (20, 0) and tuple(pos[5]) == (0, 20)
    assert len(grid_positions(10, 10, footprint=20, stride=5)) == 0
    mask = np.zeros((30, 50), bool)  # 1/2 resolution of a 100 x 60 slide
    mask[:, :25] = True  # left half is tissue
    frac = patch_tissue_fractions(mask, (100, 60), np.array([[0, 0], [30, 20], [40, 0], [80, 40]]), 20)
    np.testing.assert_allclose(frac, [1.0, 1.0, 0.5, 0.0])
    tiny = patch_tissue_fractions(mask, (100, 60), np.array([[10, 10], [90, 10]]), 1)  # smaller than a mask pixel
    np.testing.assert_allclose(tiny, [1.0, 0.0])


def test_grid_file_roundtrip_and_errors(cohort_slide: Path, tmp_path: Path) -> None:
    grid = tile_slide(cohort_slide, TilingConfig(patch_size=64), label="1", split="train").grid
    path = grid.save(tmp_path / "g.json")
    back = PatchGrid.load(path)
    np.testing.assert_array_equal(back.coords, grid.coords)
    np.testing.assert_allclose(back.tissue_fraction, grid.tissue_fraction, atol=1e-4)
    assert (back.spec, back.info, back.label, back.split) == (grid.spec, grid.info, "1", "train")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json"):
        PatchGrid.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="missing keys"):
        PatchGrid.load(tmp_path / "other.json")
