"""Attention heatmap of one slide: a head's instance scores drawn over the slide thumbnail at the patch coordinates.

Scores are shown as percentile ranks within the slide (as CLAM's heatmaps do): attention weights of a large bag
are all tiny and a few outliers would wash a linear scale out, while ranks always spread over the colour map.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from monai.visualize.utils import blend_images
from PIL import Image

from monai_distill.plotting import figure_to_image, new_figure, save_image
from wsi.reader import Slide
from wsi.tiling import read_mask_image

from .bags import Bag, BagError

__all__ = ["colormap", "draw_heatmap", "rank_normalize", "save_attention_heatmap", "slide_background"]

logger = logging.getLogger(__name__)

_CMAP = "turbo"  # perceptually ordered blue -> green -> yellow -> red
_BAR_PX = 44  # height of the colour bar strip under the image: bar, tick labels and caption at 8 pt
_BAR_MARGIN_PX = 24  # space left and right of the bar so that its end labels stay inside the image


def rank_normalize(scores: np.ndarray | torch.Tensor) -> np.ndarray:
    """Percentile ranks in [0, 1] (ties share their mean rank); a single instance gets 1."""
    s = np.asarray(torch.as_tensor(scores).float().cpu()).reshape(-1)
    if s.size == 1:
        return np.ones(1)
    return (pd.Series(s).rank(method="average").to_numpy() - 1) / (s.size - 1)


def colormap(values: np.ndarray) -> np.ndarray:
    """(N,) values in [0, 1] -> (N, 3) uint8 RGB of the heatmap's colour map (matplotlib's ``turbo``)."""
    v = np.clip(np.asarray(values, dtype=np.float64).reshape(-1), 0, 1)
    return colormaps[_CMAP](v, bytes=True)[:, :3]


def _rank_map(shape: tuple[int, int], level0_size: tuple[int, int], coords: np.ndarray, footprint: int,
              ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean rank of the patches over each pixel of an image of ``shape``, and which pixels any patch covers."""
    h, w = shape
    sx, sy = w / level0_size[0], h / level0_size[1]
    total = np.zeros((h, w), dtype=np.float64)
    count = np.zeros((h, w), dtype=np.float64)
    for (x, y), r in zip(coords, ranks):
        x0, y0 = int(np.floor(x * sx)), int(np.floor(y * sy))
        x1, y1 = max(x0 + 1, int(np.ceil((x + footprint) * sx))), max(y0 + 1, int(np.ceil((y + footprint) * sy)))
        total[y0:y1, x0:x1] += r
        count[y0:y1, x0:x1] += 1  # overlapping patches (stride < size) average their ranks
    covered = count > 0
    return np.divide(total, count, out=np.zeros_like(total), where=covered), covered


def _colour_bar_figure(image: np.ndarray) -> Figure:
    """``image`` pixel for pixel, with a horizontal low -> high colour bar of the colour map under it."""
    h, w = image.shape[:2]
    fig = new_figure((w, h + _BAR_PX))
    fig.figimage(image, xo=0, yo=_BAR_PX, origin="upper")  # unresampled: one array pixel per output pixel
    margin = min(_BAR_MARGIN_PX, w // 4)
    cax = fig.add_axes((margin / w, 26 / (h + _BAR_PX), 1 - 2 * margin / w, 10 / (h + _BAR_PX)))
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), _CMAP), cax=cax, orientation="horizontal")
    bar.set_ticks([0, 1], labels=["low", "high"], fontsize=8)
    bar.ax.tick_params(length=2, pad=1)
    bar.outline.set_linewidth(0.5)
    if w >= 200:  # the caption needs about 180 px; narrower images keep just "low" and "high"
        fig.text(0.5, 2 / (h + _BAR_PX), "attention (rank within the slide)", ha="center", va="bottom", fontsize=8)
    return fig


def draw_heatmap(
    background: np.ndarray,
    level0_size: tuple[int, int],
    coords: np.ndarray,
    footprint: int,
    scores: np.ndarray | torch.Tensor,
    alpha: float = 0.5,
    legend: bool = True,
) -> Image.Image:
    """Blend each patch's colour (by score rank) over its footprint on ``background``.

    Where patches overlap, their ranks are averaged before colouring. Pixels under no patch keep the background.

    Args:
        background: (H, W, 3) uint8 image of the whole slide.
        level0_size: ``(width, height)`` of level 0, to place the level-0 ``coords``.
        coords: (N, 2) level-0 top-left ``(x, y)`` of the patches.
        footprint: patch side in level-0 pixels.
        scores: (N,) instance scores.
        alpha: opacity of the colour.
        legend: add a low -> high colour bar under the image (same width, taller by the bar strip).

    Returns:
        RGB PIL image: the blended slide at the size of ``background``, plus the colour bar strip if ``legend``.
    """
    coords = np.asarray(coords).reshape(-1, 2)
    scores = np.asarray(torch.as_tensor(scores).float().cpu()).reshape(-1)
    if len(coords) != len(scores):
        raise ValueError(f"{len(coords)} patch coordinates but {len(scores)} scores.")
    h, w = background.shape[:2]
    ranks, covered = _rank_map((h, w), level0_size, coords, footprint, rank_normalize(scores))
    slide = np.moveaxis(background[..., :3].astype(np.float64) / 255, -1, 0)
    # blend_images colours ranks with the map and mixes by per-pixel weight: alpha on patches, 0 elsewhere.
    blended = blend_images(slide, ranks[None], alpha=alpha * covered[None].astype(np.float64), cmap=_CMAP,
                           rescale_arrays=False, transparent_background=False)
    rgb = np.round(np.moveaxis(np.asarray(blended), 0, -1) * 255).clip(0, 255).astype(np.uint8)
    if not legend:
        return Image.fromarray(rgb)
    return figure_to_image(_colour_bar_figure(rgb))


def slide_background(bag: Bag, size: int = 768) -> np.ndarray | None:
    """A clean low-resolution image of the bag's slide (``meta['slide_path']``), or the tiling thumbnail PNG.

    Returns ``None`` when neither can be read.
    """
    path, (w0, h0) = bag.meta.get("slide_path"), bag.meta.get("level0_size") or (0, 0)
    if path and Path(path).is_file() and w0 and h0:
        try:
            with Slide(path, backend=bag.meta.get("backend", "openslide")) as slide:
                return read_mask_image(slide, max(1.0, max(w0, h0) / size), preview_size=size).preview
        except Exception as e:  # fall back to the thumbnail PNG
            logger.warning("cannot read slide '%s' for the heatmap of '%s': %s", path, bag.slide_id, e)
    thumb = bag.meta.get("thumbnail")
    if thumb and Path(thumb).is_file():
        return np.asarray(Image.open(thumb).convert("RGB"))
    return None


def save_attention_heatmap(
    bag: Bag, scores: np.ndarray | torch.Tensor, path: str | os.PathLike, size: int = 768, alpha: float = 0.5
) -> Path:
    """Draw ``scores`` of ``bag``'s instances over its slide and write a PNG (atomic).

    Raises:
        BagError: the bag has no patch coordinates or slide size (synthetic bags have no place on the slide).
    """
    if bag.coords is None or not bag.meta.get("level0_size") or not bag.meta.get("footprint"):
        raise BagError(
            f"bag '{bag.slide_id}' has no patch coordinates/level0_size/footprint; heatmaps need a real bag."
        )
    w0, h0 = (int(v) for v in bag.meta["level0_size"])
    background = slide_background(bag, size)
    if background is None:  # still show where the attention is, on white
        scale = size / max(w0, h0)
        background = np.full((max(1, round(h0 * scale)), max(1, round(w0 * scale)), 3), 255, dtype=np.uint8)
    image = draw_heatmap(background, (w0, h0), bag.coords.numpy(), int(bag.meta["footprint"]), scores, alpha)
    return save_image(image, path)
