"""Thumbnail PNG of one slide with its tissue mask and kept patch grid drawn on it (for a quick visual check).

The mask is blended with MONAI's :func:`monai.visualize.utils.blend_images` (as the attention heatmaps are); the
patch outlines are set in the pixel array, one pixel wide, so the image keeps the slide's own resolution.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from monai.visualize.utils import blend_images
from PIL import Image

from monai_distill.utils import atomic_path

__all__ = ["draw_thumbnail", "save_thumbnail"]

_MASK_CMAP = "brg"  # a mask value of 1 maps to pure green: tissue is tinted green
_GRID_COLOUR = np.array([0, 60, 255], dtype=np.uint8)  # blue patch outlines


def draw_thumbnail(
    image: np.ndarray,
    mask: np.ndarray,
    level0_size: tuple[int, int],
    coords: np.ndarray,
    footprint: int,
    max_size: int = 1024,
    tint: float = 0.3,
) -> Image.Image:
    """Overlay the tissue mask (green tint) and the kept patches (blue outlines) on a low-resolution slide image.

    Args:
        image: ``(H, W, 3)`` uint8 low-resolution image of the whole slide.
        mask: boolean tissue mask of the same image (any size; resized to the image).
        level0_size: ``(width, height)`` of level 0, to map patch coordinates.
        coords: ``(N, 2)`` level-0 top-left corners of the kept patches.
        footprint: patch side in level-0 pixels.
        max_size: longest side of the result.
        tint: opacity of the mask tint.

    Returns:
        RGB PIL image.
    """
    pil = Image.fromarray(np.ascontiguousarray(image[..., :3]))
    scale = min(1.0, max_size / max(pil.size))
    size = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
    pil = pil.resize(size, Image.BILINEAR) if size != pil.size else pil
    m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
    rgb = np.asarray(pil, dtype=np.float64).transpose(2, 0, 1) / 255.0
    blended = blend_images(rgb, m[None].astype(np.float64), alpha=tint, cmap=_MASK_CMAP, rescale_arrays=False)
    out = np.ascontiguousarray((np.asarray(blended).transpose(1, 2, 0) * 255.0).round().clip(0, 255).astype(np.uint8))
    sx, sy = size[0] / level0_size[0], size[1] / level0_size[1]
    _outline(out, np.asarray(coords, dtype=np.float64).reshape(-1, 2), footprint, (sx, sy))
    return Image.fromarray(out)


def _outline(canvas: np.ndarray, coords: np.ndarray, footprint: int, scale: tuple[float, float]) -> None:
    """Draw each patch's one-pixel outline into ``canvas`` ((H, W, 3) uint8, in place)."""
    h, w = canvas.shape[:2]
    x0 = np.clip(np.floor(coords[:, 0] * scale[0]).astype(int), 0, w - 1)
    y0 = np.clip(np.floor(coords[:, 1] * scale[1]).astype(int), 0, h - 1)
    x1 = np.clip(np.floor((coords[:, 0] + footprint) * scale[0]).astype(int) - 1, x0, w - 1)
    y1 = np.clip(np.floor((coords[:, 1] + footprint) * scale[1]).astype(int) - 1, y0, h - 1)
    for a, b, c, d in zip(x0, y0, x1, y1):
        canvas[b, a:c + 1] = canvas[d, a:c + 1] = _GRID_COLOUR
        canvas[b:d + 1, a] = canvas[b:d + 1, c] = _GRID_COLOUR


def save_thumbnail(image: Image.Image, path: str | os.PathLike) -> Path:
    """Save a PNG atomically (temporary file, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
