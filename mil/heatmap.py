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
from PIL import Image, ImageDraw

from monai_distill.utils import atomic_path
from wsi.reader import Slide
from wsi.tiling import read_mask_image

from .bags import Bag, BagError

__all__ = ["colormap", "draw_heatmap", "rank_normalize", "save_attention_heatmap", "slide_background"]

logger = logging.getLogger(__name__)

# Anchor colours of a perceptually ordered blue -> green -> yellow -> red map (sampled from "turbo").
_ANCHORS = np.array(
    [(48, 18, 59), (70, 107, 227), (40, 188, 235), (50, 242, 152), (164, 252, 60), (237, 208, 58), (251, 128, 34),
     (210, 49, 5), (122, 4, 3)], dtype=np.float64)


def rank_normalize(scores: np.ndarray | torch.Tensor) -> np.ndarray:
    """Percentile ranks in [0, 1] (ties share their mean rank); a single instance gets 1."""
    s = np.asarray(torch.as_tensor(scores).float().cpu()).reshape(-1)
    if s.size == 1:
        return np.ones(1)
    return (pd.Series(s).rank(method="average").to_numpy() - 1) / (s.size - 1)


def colormap(values: np.ndarray) -> np.ndarray:
    """(N,) values in [0, 1] -> (N, 3) uint8 RGB by linear interpolation between the anchor colours."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0, 1) * (len(_ANCHORS) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_ANCHORS) - 2)
    t = (v - lo)[:, None]
    return np.round((1 - t) * _ANCHORS[lo] + t * _ANCHORS[lo + 1]).astype(np.uint8)


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

    Args:
        background: (H, W, 3) uint8 image of the whole slide.
        level0_size: ``(width, height)`` of level 0, to place the level-0 ``coords``.
        coords: (N, 2) level-0 top-left ``(x, y)`` of the patches.
        footprint: patch side in level-0 pixels.
        scores: (N,) instance scores.
        alpha: opacity of the colour.
        legend: add a low -> high colour bar under the image.
    """
    coords = np.asarray(coords).reshape(-1, 2)
    scores = np.asarray(torch.as_tensor(scores).float().cpu()).reshape(-1)
    if len(coords) != len(scores):
        raise ValueError(f"{len(coords)} patch coordinates but {len(scores)} scores.")
    h, w = background.shape[:2]
    sx, sy = w / level0_size[0], h / level0_size[1]
    colour = np.zeros((h, w, 3), dtype=np.float64)
    weight = np.zeros((h, w, 1), dtype=np.float64)
    for (x, y), rgb in zip(coords, colormap(rank_normalize(scores))):
        x0, y0 = int(np.floor(x * sx)), int(np.floor(y * sy))
        x1, y1 = max(x0 + 1, int(np.ceil((x + footprint) * sx))), max(y0 + 1, int(np.ceil((y + footprint) * sy)))
        colour[y0:y1, x0:x1] += rgb
        weight[y0:y1, x0:x1] += 1  # overlapping patches (stride < size) average their colours
    covered = weight[..., 0] > 0
    out = background[..., :3].astype(np.float64).copy()
    out[covered] = (1 - alpha) * out[covered] + alpha * colour[covered] / weight[covered]
    image = Image.fromarray(np.round(out).clip(0, 255).astype(np.uint8))
    if not legend:
        return image
    bar_h = max(8, h // 40)
    bar = np.repeat(colormap(np.linspace(0, 1, w))[None], bar_h, axis=0)
    canvas = Image.new("RGB", (w, h + bar_h + 14), (255, 255, 255))
    canvas.paste(image, (0, 0))
    canvas.paste(Image.fromarray(bar), (0, h + 2))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, h + bar_h + 2), "low", fill=(0, 0, 0))
    draw.text((max(0, w - 30), h + bar_h + 2), "high", fill=(0, 0, 0))
    return canvas


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
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
