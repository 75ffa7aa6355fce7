"""Patch grids: which level/size to read for a requested level or mpp, grid positions, tissue fraction per patch.

Coordinates are always level-0 pixels ``(x, y)`` of the patch's top-left corner, as openslide uses them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_distill.utils import atomic_path

from .reader import SlideInfo

__all__ = [
    "GRID_FORMAT_VERSION",
    "PatchGrid",
    "PatchSpec",
    "grid_positions",
    "patch_tissue_fractions",
    "resolve_patch_spec",
]

GRID_FORMAT_VERSION = 1


@dataclass(frozen=True)
class PatchSpec:
    """How the patches of one slide are read.

    Attributes:
        patch_size: side of the patches handed to users, in pixels.
        level: pyramid level the pixels are read from.
        read_size: side read at ``level``; differs from ``patch_size`` when the requested mpp is not stored and the
            region is resized after reading.
        footprint: side of a patch in level-0 pixels.
        stride: grid step in level-0 pixels.
        mpp: microns per pixel of the delivered patches (``None`` when the slide has no mpp).
        requested_level: the level asked for, or ``None``.
        requested_mpp: the mpp asked for, or ``None``.
    """

    patch_size: int
    level: int
    read_size: int
    footprint: int
    stride: int
    mpp: float | None
    requested_level: int | None = None
    requested_mpp: float | None = None

    @property
    def needs_resize(self) -> bool:
        return self.read_size != self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_patch_spec(
    info: SlideInfo,
    patch_size: int,
    level: int | None = None,
    mpp: float | None = None,
    stride: int | None = None,
    mpp_rtol: float = 0.1,
) -> PatchSpec:
    """Choose the level and read size for patches at a requested ``level`` or ``mpp``.

    For ``mpp``: the coarsest stored level that is at least as fine as the request (within ``mpp_rtol``) is read;
    when its mpp is not within ``mpp_rtol`` of the request, a larger region is read and resized to ``patch_size``.

    Args:
        info: the slide.
        patch_size: output patch side in pixels.
        level: pyramid level (exclusive with ``mpp``); neither means level 0.
        mpp: microns per pixel of the output patches.
        stride: grid step at the output resolution; defaults to ``patch_size`` (no overlap).
        mpp_rtol: relative tolerance under which a stored level counts as the requested mpp.

    Raises:
        ValueError: both or invalid ``level``/``mpp``, a level the slide lacks, ``mpp`` on a slide without mpp
            metadata, or an mpp finer than level 0.
    """
    patch_size = int(patch_size)
    if patch_size <= 0:
        raise ValueError(f"patch_size must be positive, got {patch_size}.")
    stride = patch_size if stride is None else int(stride)
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}.")
    if level is not None and mpp is not None:
        raise ValueError(f"give either level ({level}) or mpp ({mpp}), not both.")

    if mpp is None:
        lvl = 0 if level is None else int(level)
        if not 0 <= lvl < info.level_count:
            raise ValueError(f"'{info.path}' has levels 0..{info.level_count - 1}; level {lvl} was requested.")
        ds = info.downsamples[lvl]
        level_mpp = info.level_mpp(lvl)
        return PatchSpec(
            patch_size=patch_size,
            level=lvl,
            read_size=patch_size,
            footprint=max(1, round(patch_size * ds)),
            stride=max(1, round(stride * ds)),
            mpp=level_mpp[0] if level_mpp else None,
            requested_level=level,
        )

    target = float(mpp)
    if not math.isfinite(target) or target <= 0:
        raise ValueError(f"mpp must be a positive number, got {mpp}.")
    if info.mpp is None:
        raise ValueError(f"'{info.path}' has no microns-per-pixel metadata; request a --level instead of --mpp {mpp}.")
    mpp0 = info.mpp[0]
    if target < mpp0 * (1 - mpp_rtol):
        raise ValueError(
            f"mpp {target} is finer than level 0 of '{info.path}' ({mpp0:.4g} µm/px); patches would be upsampled."
        )
    fine_enough = [lvl for lvl in range(info.level_count) if mpp0 * info.downsamples[lvl] <= target * (1 + mpp_rtol)]
    lvl = max(fine_enough, key=lambda i: info.downsamples[i])
    level_mpp = mpp0 * info.downsamples[lvl]
    scale = target / level_mpp
    read_size = patch_size if abs(scale - 1.0) <= mpp_rtol else max(1, round(patch_size * scale))
    actual_mpp = level_mpp * read_size / patch_size  # what the patches really are (the request up to rounding)
    return PatchSpec(
        patch_size=patch_size,
        level=lvl,
        read_size=read_size,
        footprint=max(1, round(read_size * info.downsamples[lvl])),
        stride=max(1, round(stride * actual_mpp / mpp0)),
        mpp=actual_mpp,
        requested_mpp=target,
    )


def grid_positions(width: int, height: int, footprint: int, stride: int) -> np.ndarray:
    """Top-left corners ``(x, y)`` of every patch of side ``footprint`` that fits in a ``width`` x ``height`` image.

    Returns:
        ``(N, 2)`` int64 array, row-major (y outer, x inner).
    """
    if footprint > width or footprint > height:
        return np.zeros((0, 2), dtype=np.int64)
    xs = np.arange(0, width - footprint + 1, stride, dtype=np.int64)
    ys = np.arange(0, height - footprint + 1, stride, dtype=np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def patch_tissue_fractions(
    mask: np.ndarray, level0_size: tuple[int, int], coords: np.ndarray, footprint: int
) -> np.ndarray:
    """Fraction of tissue pixels of ``mask`` under each patch, with a summed-area table (one pass for all patches).

    Args:
        mask: boolean tissue mask covering the whole slide at low resolution.
        level0_size: ``(width, height)`` of level 0.
        coords: ``(N, 2)`` level-0 top-left corners.
        footprint: patch side in level-0 pixels.

    Returns:
        ``(N,)`` float32 fractions in [0, 1].
    """
    if len(coords) == 0:
        return np.zeros(0, dtype=np.float32)
    mh, mw = mask.shape
    sx, sy = mw / level0_size[0], mh / level0_size[1]
    sat = np.zeros((mh + 1, mw + 1), dtype=np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.int64), axis=0), axis=1)
    x0 = np.clip(np.round(coords[:, 0] * sx).astype(np.int64), 0, mw - 1)
    y0 = np.clip(np.round(coords[:, 1] * sy).astype(np.int64), 0, mh - 1)
    # a patch smaller than a mask pixel still covers one mask pixel
    x1 = np.clip(np.maximum(np.round((coords[:, 0] + footprint) * sx).astype(np.int64), x0 + 1), 1, mw)
    y1 = np.clip(np.maximum(np.round((coords[:, 1] + footprint) * sy).astype(np.int64), y0 + 1), 1, mh)
    area = (x1 - x0) * (y1 - y0)
    inside = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    return (inside / area).astype(np.float32)


@dataclass
class PatchGrid:
    """The kept patches of one slide: the per-slide result of tiling, saved as one JSON file.

    Attributes:
        slide_id: identifier (file stem unless the CSV gave one).
        slide_path: absolute path of the slide file.
        label: slide label from the input CSV (``None`` for a directory input).
        info: slide facts.
        spec: how to read the patches.
        coords: ``(N, 2)`` int64 level-0 top-left corners ``(x, y)``.
        tissue_fraction: ``(N,)`` float32 tissue fraction of each patch.
        tissue_threshold: minimum tissue fraction used to keep a patch.
        mask: how the tissue mask was made (source image, its downsample, thresholds).
        split: optional split from the input CSV.
    """

    slide_id: str
    slide_path: str
    label: Any
    info: SlideInfo
    spec: PatchSpec
    coords: np.ndarray
    tissue_fraction: np.ndarray
    tissue_threshold: float
    mask: dict[str, Any] = field(default_factory=dict)
    split: str | None = None

    def __post_init__(self) -> None:
        self.coords = np.asarray(self.coords, dtype=np.int64).reshape(-1, 2)
        self.tissue_fraction = np.asarray(self.tissue_fraction, dtype=np.float32).reshape(-1)
        if len(self.coords) != len(self.tissue_fraction):
            raise ValueError(
                f"grid of '{self.slide_id}': {len(self.coords)} coordinates but {len(self.tissue_fraction)} fractions."
            )

    def __len__(self) -> int:
        return len(self.coords)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": GRID_FORMAT_VERSION,
            "slide_id": self.slide_id,
            "slide_path": self.slide_path,
            "label": _jsonable(self.label),
            "split": self.split,
            "slide": self.info.to_dict(),
            "patch": self.spec.to_dict(),
            "tissue_threshold": float(self.tissue_threshold),
            "mask": self.mask,
            "n_patches": len(self),
            "coords": self.coords.tolist(),
            "tissue_fraction": [round(float(f), 4) for f in self.tissue_fraction],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the grid as JSON atomically (temporary file, then rename)."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), separators=(",", ":")) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PatchGrid:
        """Read a grid written by :meth:`save`; a wrong or damaged file raises ``ValueError`` naming it."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"'{path}' is not a readable patch-grid JSON file: {e}") from e
        missing = {"slide_id", "slide_path", "slide", "patch", "coords", "tissue_fraction"} - set(d)
        if missing:
            raise ValueError(f"'{path}' is not a patch grid: missing keys {sorted(missing)}.")
        if d.get("format_version", GRID_FORMAT_VERSION) > GRID_FORMAT_VERSION:
            raise ValueError(
                f"'{path}' has grid format {d['format_version']}; this version reads up to {GRID_FORMAT_VERSION}."
            )
        return cls(
            slide_id=d["slide_id"],
            slide_path=d["slide_path"],
            label=d.get("label"),
            split=d.get("split"),
            info=SlideInfo.from_dict(d["slide"]),
            spec=PatchSpec(**d["patch"]),
            coords=np.asarray(d["coords"], dtype=np.int64).reshape(-1, 2),
            tissue_fraction=np.asarray(d["tissue_fraction"], dtype=np.float32),
            tissue_threshold=float(d.get("tissue_threshold", 0.0)),
            mask=d.get("mask", {}),
        )


def _jsonable(value: Any) -> Any:
    """Labels come from pandas (numpy scalars, NaN); store plain JSON values."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
