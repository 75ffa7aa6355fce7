"""Read every patch of a grid from one open slide: the fast path of tiling, real bags and patch export.

:class:`~wsi.datasets.SlidePatchDataset` (MONAI ``PatchWSIDataset``) builds a ``MetaTensor`` with its metadata for
each patch, which is right for training loops that want MONAI items. Reading a whole grid into one array does not need
any of that: :func:`read_grid` opens the slide once (or reuses the handle :func:`~wsi.tiling.tile_slide` used), reads
each region with one copy into a preallocated ``(N, 3, P, P)`` uint8 array and makes no per-patch objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import Image

from monai_distill.progress import progress_bar

from .grid import PatchGrid
from .reader import Slide

__all__ = ["iter_grid_batches", "read_grid"]


def _read_into(slide: Any, grid: PatchGrid, index: int, out: np.ndarray) -> None:
    x, y = grid.coords[index]
    spec = grid.spec
    reader = getattr(slide, "read_patch", None)
    if callable(reader):
        hwc = reader(int(x), int(y), spec.read_size, spec.level)
    else:  # a reader of the user's own (wsi.components) needs only read_region
        hwc = np.asarray(slide.read_region(int(x), int(y), spec.read_size, spec.read_size, spec.level))
    if spec.needs_resize:  # a requested mpp between stored levels: same resampling as SlidePatchDataset
        hwc = np.asarray(Image.fromarray(np.ascontiguousarray(hwc)).resize((spec.patch_size,) * 2, Image.BILINEAR))
    out[:] = hwc.transpose(2, 0, 1)


@contextmanager
def _opened(grid: PatchGrid, slide: Any, backend: str | None) -> Iterator[Any]:
    if slide is not None:  # the caller's handle (e.g. the one tile_slide used): left open
        yield slide
        return
    with Slide(grid.slide_path, backend=backend or grid.info.backend) as own:
        yield own


def iter_grid_batches(
    grid: PatchGrid, batch_size: int = 256, slide: Any = None, backend: str | None = None, progress: bool = False
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(index slice, (B, 3, P, P) uint8 array)`` over the patches of ``grid``, in grid order.

    Args:
        grid: the patches to read.
        batch_size: patches per yielded array; bounds memory on slides with many thousands of patches.
        slide: an open slide to read from (left open); by default the grid's slide is opened once and closed after.
        backend: MONAI ``WSIReader`` backend when the slide is opened here (default: the one that tiled it).
        progress: show a progress bar over the patches.

    Raises:
        FileNotFoundError: the slide file has moved since it was tiled.
        SlideReadError: a region cannot be read (the message names the file and the region).
    """
    size, step = grid.spec.patch_size, max(1, int(batch_size))
    with _opened(grid, slide, backend) as handle, progress_bar(
        total=len(grid), desc=f"reading {grid.slide_id}", unit="patch", enabled=progress
    ) as bar:
        for start in range(0, len(grid), step):
            stop = min(len(grid), start + step)
            out = np.empty((stop - start, 3, size, size), dtype=np.uint8)
            for i in range(start, stop):
                _read_into(handle, grid, i, out[i - start])
            bar.update(stop - start)
            yield slice(start, stop), out


def read_grid(grid: PatchGrid, slide: Any = None, backend: str | None = None, progress: bool = False) -> np.ndarray:
    """Every patch of ``grid`` as one ``(N, 3, P, P)`` uint8 array (see :func:`iter_grid_batches` for the
    arguments)."""
    batches = iter_grid_batches(grid, len(grid), slide, backend, progress)
    try:
        return next(batches, (None, np.empty((0, 3, grid.spec.patch_size, grid.spec.patch_size), np.uint8)))[1]
    finally:
        batches.close()  # closes the slide now, not when the generator is collected
