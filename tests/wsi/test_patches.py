"""The fast path of reading a grid: same pixels as MONAI's PatchWSIDataset, one open slide, batches in order."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from wsi import SlidePatchDataset, TilingConfig, iter_grid_batches, open_slide, read_grid, tile_slide
from wsi import reader as reader_module


def _dataset_pixels(grid) -> np.ndarray:
    ds = SlidePatchDataset([grid], include_label=False)
    try:
        return np.stack([np.asarray(ds[i]["image"]) for i in range(len(ds))])
    finally:
        ds.close()


@pytest.mark.parametrize("patch_size", [128, 96])
def test_same_pixels_as_monai_dataset(cmu_svs: Path, patch_size: int) -> None:
    grid = tile_slide(cmu_svs, TilingConfig(patch_size=patch_size)).grid
    fast = read_grid(grid)
    assert fast.shape == (len(grid), 3, patch_size, patch_size) and fast.dtype == np.uint8
    np.testing.assert_array_equal(fast, _dataset_pixels(grid))
    assert fast.std() > 10  # real tissue, not an empty buffer


def test_resized_patches_match_dataset(cmu_svs: Path) -> None:
    # 1.0 µm/px on a 0.5 µm/px single-level slide: 128 px read at level 0 and resized to 64
    grid = tile_slide(cmu_svs, TilingConfig(patch_size=64, mpp=1.0)).grid
    assert grid.spec.needs_resize
    grid = dataclasses.replace(grid, coords=grid.coords[:12], tissue_fraction=grid.tissue_fraction[:12])
    np.testing.assert_array_equal(read_grid(grid), _dataset_pixels(grid))


def test_tile_and_read_open_the_slide_once(cohort, monkeypatch: pytest.MonkeyPatch) -> None:
    root, table = cohort
    path = root / table.slide_path.iloc[0]
    opened: list[str] = []
    real_init = reader_module.Slide.__init__

    def counting_init(self, p, *args, **kwargs):
        opened.append(str(p))
        real_init(self, p, *args, **kwargs)

    monkeypatch.setattr(reader_module.Slide, "__init__", counting_init)
    with open_slide(path) as slide:
        tiling = tile_slide(path, TilingConfig(patch_size=64), slide=slide)
        patches = read_grid(tiling.grid, slide=slide)
        assert slide.handle is not None  # the caller's handle is left open
        assert slide.read_patch(0, 0, 8).shape == (8, 8, 3)
    assert len(opened) == 1
    assert len(patches) == len(tiling.grid) > 20


def test_batches_cover_the_grid_in_order(cohort) -> None:
    root, table = cohort
    grid = tile_slide(root / table.slide_path.iloc[1], TilingConfig(patch_size=64)).grid
    whole = read_grid(grid)
    parts = list(iter_grid_batches(grid, batch_size=7))
    assert [p[0].start for p in parts] == list(range(0, len(grid), 7))
    assert max(len(p[1]) for p in parts) == 7
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole)


def test_user_reader_with_read_region_only(cmu_svs: Path) -> None:
    grid = tile_slide(cmu_svs, TilingConfig(patch_size=128)).grid

    class RegionOnly:  # a reader of the user's own needs only read_region (wsi.components)
        def __init__(self, path):
            self.slide = open_slide(path)

        def read_region(self, x, y, w, h, level=0):
            return self.slide.read_region(x, y, w, h, level)

    np.testing.assert_array_equal(read_grid(grid, slide=RegionOnly(cmu_svs)), read_grid(grid))


def test_moved_slide_names_the_file(cohort, tmp_path: Path) -> None:
    root, table = cohort
    grid = tile_slide(root / table.slide_path.iloc[0], TilingConfig(patch_size=64)).grid
    moved = dataclasses.replace(grid, slide_path=str(tmp_path / "gone.tif"))
    with pytest.raises(FileNotFoundError, match=r"gone\.tif"):
        read_grid(moved)
