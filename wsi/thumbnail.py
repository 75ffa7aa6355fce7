"""Thumbnail PNG of one slide with its tissue mask and kept patch grid drawn on it (for a quick visual check)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from monai_distill.utils import atomic_path

__all__ = ["draw_thumbnail", "save_thumbnail"]

_MASK_TINT = np.array([0, 200, 0], dtype=np.float32)  # green over tissue
_GRID_COLOUR = (0, 60, 255)  # blue patch outlines


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
    rgb = np.asarray(pil, dtype=np.float32).copy()
    rgb[m] = (1 - tint) * rgb[m] + tint * _MASK_TINT
    out = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    sx, sy = size[0] / level0_size[0], size[1] / level0_size[1]
    for x, y in np.asarray(coords).reshape(-1, 2):
        draw.rectangle(
            [x * sx, y * sy, (x + footprint) * sx - 1, (y + footprint) * sy - 1], outline=_GRID_COLOUR, width=1
        )
    return out


def save_thumbnail(image: Image.Image, path: str | os.PathLike) -> Path:
    """Save a PNG atomically (temporary file, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
