"""Tiling the two real SVS slides (JPEG and JPEG2000) through MONAI's WSIReader, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest
from PIL import Image

from wsi.datasets import SlidePatchDataset
from wsi.grid import PatchGrid, patch_tissue_fractions
from wsi.reader import Slide
from wsi.tiling import read_mask_image
from wsi.tissue import tile_tissue_fraction, tissue_mask
from wsi.workflows import TilingWorkflow, coords_path, thumbnail_path

from .helpers import CMU, TCGA

# slide -> (level read for an independent mask, its expected kept-patch range at 256 px, level 0)
EXPECTED = {CMU: (0, (15, 60)), TCGA: (1, (90, 200))}


@pytest.fixture(scope="module")
def tiled(wsi_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("tiled_svs")
    table = TilingWorkflow(wsi_dir, out, patch_size=256, progress=False).run()
    return out, table


def test_both_slides_done(tiled) -> None:
    _, table = tiled
    assert list(table.slide_id) == [Path(CMU).stem, Path(TCGA).stem]
    assert (table.status == "done").all(), table.to_string()
    assert (table.error.fillna("") == "").all()


@pytest.mark.parametrize("name", [CMU, TCGA])
def test_patch_counts_and_coordinates_inside_tissue(tiled, wsi_dir: Path, name: str) -> None:
    out, _ = tiled
    grid = PatchGrid.load(coords_path(out, Path(name).stem))
    level, (lo, hi) = EXPECTED[name]
    assert lo <= len(grid) <= hi
    assert grid.spec.level == 0 and grid.spec.patch_size == 256
    assert (grid.tissue_fraction >= 0.5).all()
    w0, h0 = grid.info.dimensions[0]
    assert (grid.coords >= 0).all() and (grid.coords[:, 0] + 256 <= w0).all() and (grid.coords[:, 1] + 256 <= h0).all()

    # an independent mask, from a pyramid level read straight with openslide instead of the stored thumbnail
    with openslide.OpenSlide(str(wsi_dir / name)) as osr:
        lw, lh = osr.level_dimensions[level]
        img = osr.read_region((0, 0), level, (lw, lh)).convert("RGB").resize((w0 // 32, h0 // 32), Image.BOX)
    mask = tissue_mask(np.asarray(img))
    kept = patch_tissue_fractions(mask, (w0, h0), grid.coords, 256)
    assert kept.min() >= 0.2 and kept.mean() >= 0.7, f"kept patches' tissue in the independent mask: {kept}"
    # the kept share of the grid follows the tissue share of the slide
    n_candidates = (w0 // 256) * (h0 // 256)
    assert abs(len(grid) / n_candidates - mask.mean()) < 0.15


@pytest.mark.parametrize("name", [CMU, TCGA])
def test_patches_decode_to_he_colours(tiled, name: str) -> None:
    out, _ = tiled
    ds = SlidePatchDataset(out, include_label=False)  # every grid of the run, read with MONAI's WSIReader
    idx = [i for i, d in enumerate(ds.data) if d["slide_id"] == Path(name).stem]
    means, tissue = [], []
    for i in idx:
        img = ds[i]["image"]
        assert tuple(img.shape) == (3, 256, 256) and str(img.dtype) == "torch.uint8"
        hwc = np.moveaxis(img.numpy(), 0, -1)
        means.append(hwc.reshape(-1, 3).mean(0))
        tissue.append(tile_tissue_fraction(hwc))
    ds.close()
    r, g, b = np.asarray(means).T
    # eosin pink and hematoxylin purple both absorb green most: G is the darkest channel, and patches are not glass
    assert np.mean((g < r - 10) & (g < b - 5)) >= 0.9, np.asarray(means)
    assert np.mean((r + g + b) / 3 < 220) >= 0.9
    assert np.median(tissue) >= 0.5


def test_mask_from_level_read_in_blocks_matches_whole_read(cmu_svs: Path) -> None:
    """Without the stored thumbnail, CMU's only level is read; block-wise reading gives the same mask."""
    with Slide(cmu_svs) as s:
        whole = read_mask_image(s, 32, use_associated_thumbnail=False)
        blocks = read_mask_image(s, 32, use_associated_thumbnail=False, block=512)
    assert whole.source == blocks.source == "level 0"
    assert max(blocks.preview.shape[:2]) > 512  # reduced only to the preview size while reading
    a, b = tissue_mask(whole.image), tissue_mask(blocks.image)
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    assert (a[:h, :w] == b[:h, :w]).mean() > 0.95
    assert blocks.downsample == pytest.approx(whole.downsample, rel=0.02)


@pytest.mark.parametrize("name", [CMU, TCGA])
def test_thumbnails_written(tiled, name: str) -> None:
    out, _ = tiled
    path = thumbnail_path(out, Path(name).stem)
    thumb = np.asarray(Image.open(path).convert("RGB"))
    assert max(thumb.shape[:2]) <= 1024 and min(thumb.shape[:2]) >= 256
    blue = (thumb[..., 0] == 0) & (thumb[..., 1] == 60) & (thumb[..., 2] == 255)
    assert blue.sum() > 100  # the kept grid is drawn
    with Slide(PatchGrid.load(coords_path(out, Path(name).stem)).slide_path) as s:
        w0, h0 = s.info.dimensions[0]
    assert abs(thumb.shape[1] / thumb.shape[0] - w0 / h0) < 0.02
