"""Tissue mask on real H&E tiles: background and pen marks are rejected, tissue is accepted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi.tiling import TilingConfig
from wsi.tissue import TissueMaskConfig, tile_tissue_fraction, tissue_mask

DEFAULT_THRESHOLD = TilingConfig().tissue_threshold


def _tile(he_tiles: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(he_tiles / name))


@pytest.mark.parametrize("name", ["histolab_no-tissue.png", "histolab_no-tissue-red-pen.png"])
def test_no_tissue_tiles_are_rejected(he_tiles: Path, name: str) -> None:
    frac = tile_tissue_fraction(_tile(he_tiles, name))
    assert frac < 0.1, f"{name}: {frac:.3f} of the tile called tissue"
    assert frac < DEFAULT_THRESHOLD


@pytest.mark.parametrize(
    "name",
    [
        "histolab_tissue-level0-4302-10273-4814-10785.png",
        "histolab_tissue-level0-7352-11762-7864-12274.png",
        "histolab_tissue-level2-1784-6289-5880-10386.png",
    ],
)
def test_tissue_tiles_are_accepted(he_tiles: Path, name: str) -> None:
    assert tile_tissue_fraction(_tile(he_tiles, name)) >= DEFAULT_THRESHOLD


def test_pen_filter_is_what_rejects_the_pen_tile(he_tiles: Path) -> None:
    """Without the pen filter the red-pen tile is mostly 'tissue': the filter, not luck, rejects it."""
    tile = _tile(he_tiles, "histolab_no-tissue-red-pen.png")
    with_filter = tile_tissue_fraction(tile)
    without = tile_tissue_fraction(tile, TissueMaskConfig(pen_filter=False))
    assert without > 0.4 > 0.1 > with_filter


def test_blank_and_black_images_have_no_tissue() -> None:
    rng = np.random.default_rng(0)
    glass = np.clip(238 + rng.normal(0, 2, (64, 64, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(glass).any()
    assert not tissue_mask(np.zeros((64, 64, 3), np.uint8)).any()  # transparent/black slide borders


def test_mask_config_from_dict_validates() -> None:
    cfg = TissueMaskConfig.from_any({"threshold": 0.2, "pen_rules": [[0.95, 0.03, 0.5, 1.0]]})
    assert cfg.threshold == 0.2 and cfg.pen_rules == ((0.95, 0.03, 0.5, 1.0),)
    with pytest.raises(KeyError, match="unknown tissue mask option"):
        TissueMaskConfig.from_any({"treshold": 0.2})
    with pytest.raises(ValueError, match="pen rule"):
        TissueMaskConfig.from_any({"pen_rules": [[0.9, 0.1]]})
    with pytest.raises(ValueError, match="otsu"):
        tissue_mask(np.full((8, 8, 3), 200, np.uint8), TissueMaskConfig(threshold="triangle"))
