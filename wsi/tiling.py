"""Tile one slide: tissue mask on a low-resolution image, patch grid at a level or mpp, tissue fraction per patch."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .grid import PatchGrid, grid_positions, patch_tissue_fractions, resolve_patch_spec
from .reader import Slide
from .thumbnail import draw_thumbnail
from .tissue import TissueMaskConfig, tissue_mask

__all__ = ["MaskImage", "NoTissueError", "SlideTiling", "TilingConfig", "open_with", "read_mask_image", "tile_slide"]


class NoTissueError(RuntimeError):
    """The slide was read but no patch passed the tissue threshold."""


@dataclass
class TilingConfig:
    """Parameters of :func:`tile_slide`.

    Args:
        patch_size: output patch side in pixels.
        level: pyramid level of the patches (exclusive with ``mpp``; neither means level 0).
        mpp: microns per pixel of the patches; the nearest finer level is read and resized when needed.
        stride: grid step at the patch resolution (defaults to ``patch_size``).
        tissue_threshold: keep patches whose tissue fraction is at least this.
        backend: MONAI ``WSIReader`` backend.
        mask_downsample: coarsest level-0 downsample of the tissue mask; the mask is made finer when patches are small
            so that a patch spans at least 8 mask pixels per side (its tissue fraction then has 1/64 resolution).
        mask: tissue-mask thresholds (:class:`~wsi.tissue.TissueMaskConfig` or a dict of its fields).
        mpp_rtol: relative tolerance under which a stored level counts as the requested mpp.
        use_associated_thumbnail: let the mask come from the scanner's stored thumbnail when no pyramid level is small
            enough (single-level SVS).
        thumbnail_size: longest side of the saved thumbnail PNG.
        components: the config-defined components that replace a default (``reader_def``, ``masker_def``,
            ``grid_def``, ``writer_def``; see :mod:`wsi.components`), as their JSON definitions; empty with the
            defaults, and then left out of :meth:`to_dict`, so that the fingerprint stays that of a run without them.
    """

    patch_size: int = 256
    level: int | None = None
    mpp: float | None = None
    stride: int | None = None
    tissue_threshold: float = 0.5
    backend: str = "openslide"
    mask_downsample: float = 32.0
    mask: TissueMaskConfig = field(default_factory=TissueMaskConfig)
    mpp_rtol: float = 0.1
    use_associated_thumbnail: bool = True
    thumbnail_size: int = 1024
    components: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mask = TissueMaskConfig.from_any(self.mask)
        if not 0.0 <= float(self.tissue_threshold) <= 1.0:
            raise ValueError(f"tissue_threshold must be in [0, 1], got {self.tissue_threshold}.")
        if self.level is not None and self.mpp is not None:
            raise ValueError(f"give either level ({self.level}) or mpp ({self.mpp}), not both.")
        if float(self.mask_downsample) < 1:
            raise ValueError(f"mask_downsample must be >= 1, got {self.mask_downsample}.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mask"] = self.mask.to_dict()
        if not d["components"]:
            del d["components"]
        return d

    def fingerprint(self) -> str:
        """Hash of everything that changes the output; a rerun only skips slides tiled with the same one."""
        keys = {k: v for k, v in self.to_dict().items() if k != "thumbnail_size"}
        return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class MaskImage:
    """The low-resolution image the tissue mask is computed on.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB at the mask resolution.
        source: ``"level <n>"`` or ``"associated thumbnail"``.
        downsample: level-0 pixels per image pixel ``(x, y)``.
        preview: the same view before reduction to the mask resolution (at most ``preview_size`` on its long side),
            for the thumbnail PNG.
    """

    image: np.ndarray
    source: str
    downsample: tuple[float, float]
    preview: np.ndarray | None = None


@dataclass
class SlideTiling:
    """Everything :func:`tile_slide` produced for one slide."""

    grid: PatchGrid
    mask: np.ndarray
    mask_image: MaskImage
    n_candidates: int
    reader: Callable[[str], Any] | None = None  # opens the slide again for a finer thumbnail (None: wsi.reader.Slide)

    def thumbnail(self, max_size: int = 1024, min_size: int = 512) -> Image.Image:
        """The slide with the tissue mask and the kept grid drawn on it.

        The image the mask came from is reused when it has at least ``min_size`` pixels on its long side; a smaller
        one (e.g. the 1/16 level of a small slide) would not show the grid, so then a finer view is read.
        """
        img = self.mask_image.preview if self.mask_image.preview is not None else self.mask_image.image
        w0, h0 = self.grid.info.dimensions[0]
        if max(img.shape[:2]) < min(min_size, max(w0, h0)):
            with open_with(self.reader, self.grid.slide_path, self.grid.info.backend) as slide:
                img = read_mask_image(slide, max(1.0, max(w0, h0) / max_size), preview_size=max_size).preview
        return draw_thumbnail(
            img,
            self.mask,
            self.grid.info.dimensions[0],
            self.grid.coords,
            self.grid.spec.footprint,
            max_size=max_size,
        )


@contextmanager
def open_with(reader: Callable[[str], Any] | None, path: str | os.PathLike, backend: str = "openslide",
              slide: Any = None) -> Iterator[Any]:
    """Open ``path`` with ``reader`` (``None``: :class:`~wsi.reader.Slide` with ``backend``) and close it after.

    Args:
        reader: a callable ``reader(path)`` that returns an open slide (see :mod:`wsi.components`), or ``None``.
        path: the slide file.
        backend: MONAI ``WSIReader`` backend of the default reader.
        slide: an already open slide: yielded as it is and left open (its owner closes it).
    """
    if slide is not None:
        yield slide
        return
    slide = Slide(path, backend=backend) if reader is None else reader(str(path))
    try:
        yield slide
    finally:
        close = getattr(slide, "close", None)
        if callable(close):
            close()


def read_mask_image(
    slide: Slide,
    target_downsample: float,
    use_associated_thumbnail: bool = True,
    preview_size: int = 1024,
    block: int = 4096,
) -> MaskImage:
    """Read the cheapest image of the whole slide that is at least as fine as ``target_downsample``.

    Candidates are the pyramid levels and (openslide) the stored thumbnail. The coarsest candidate no coarser than the
    target is read; if every candidate is coarser, the finest one is. The image is then reduced to the target. A level
    larger than ``block`` x ``block`` is read block by block and reduced on the way, so memory stays bounded on a slide
    without small levels.

    Args:
        slide: an open slide.
        target_downsample: wanted level-0 pixels per mask pixel.
        use_associated_thumbnail: consider the stored thumbnail.
        preview_size: longest side of the kept preview image.
        block: side of the blocks a large level is read in.
    """
    info = slide.info
    w0, h0 = info.dimensions[0]
    candidates: list[tuple[float, str]] = [(info.downsamples[lvl], f"level {lvl}") for lvl in range(info.level_count)]
    # (a reader of the user's own may have no stored thumbnail: then only the pyramid levels are candidates)
    has_thumbnail = use_associated_thumbnail and callable(getattr(slide, "thumbnail_size", None))
    thumb_size = slide.thumbnail_size() if has_thumbnail else None
    if thumb_size is not None:
        candidates.append((w0 / thumb_size[0], "associated thumbnail"))
    fine_enough = [c for c in candidates if c[0] <= target_downsample * 1.001]
    ds, source = max(fine_enough) if fine_enough else min(candidates)
    image = slide.associated_thumbnail() if source == "associated thumbnail" else None
    if image is None:  # a level was chosen, or the thumbnail failed to decode
        ds, source = max(c for c in (fine_enough or candidates) if c[1] != "associated thumbnail")
        level = int(source.split()[1])
        lw, lh = info.dimensions[level]
        # reduce while reading only down to the preview size, so that the thumbnail PNG keeps its detail
        factor = max(1, min(int(target_downsample / ds), math.ceil(max(lw, lh) / preview_size)))
        image = _read_reduced(slide, level, factor, block) if lw * lh > block * block else slide.read_level(level)
        ds = w0 / image.shape[1]
    preview = _shrink(image, preview_size / max(image.shape[:2]))
    factor = target_downsample / ds
    if factor > 1.25:  # reduce to the target so that the morphology sizes (in mask pixels) mean the same everywhere
        image = _shrink(image, 1.0 / factor)
    h, w = image.shape[:2]
    return MaskImage(image=image, source=source, downsample=(w0 / w, h0 / h), preview=preview)


def _read_reduced(slide: Slide, level: int, factor: int, block: int) -> np.ndarray:
    """Read ``level`` in blocks and average each ``factor`` x ``factor`` cell (exact area reduction, bounded memory)."""
    lw, lh = slide.info.dimensions[level]
    ds = slide.info.downsamples[level]
    block = max(factor, block // factor * factor)  # whole cells per block, so blocks tile the output exactly
    out = np.zeros((lh // factor, lw // factor, 3), dtype=np.uint8)
    for by in range(0, out.shape[0] * factor, block):
        for bx in range(0, out.shape[1] * factor, block):
            bh = min(block, out.shape[0] * factor - by)
            bw = min(block, out.shape[1] * factor - bx)
            region = slide.read_region(round(bx * ds), round(by * ds), bw, bh, level).astype(np.float32)
            cells = region.reshape(bh // factor, factor, bw // factor, factor, 3).mean(axis=(1, 3))
            out[by // factor : (by + bh) // factor, bx // factor : (bx + bw) // factor] = np.round(cells)
    return out


def _shrink(image: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BOX))


def tile_slide(
    path: str | os.PathLike,
    cfg: TilingConfig | None = None,
    slide_id: str | None = None,
    label: Any = None,
    split: str | None = None,
    *,
    reader: Callable[[str], Any] | None = None,
    masker: Callable[[np.ndarray], np.ndarray] | None = None,
    grid: Any = None,
    slide: Any = None,
) -> SlideTiling:
    """Tissue mask + patch grid of one slide.

    To tile and read in one pass, open the slide once and hand it to both steps (the whole path then runs at the
    speed of a plain openslide loop; ``benchmarks/results/wsi_tiling.md``)::

        with open_slide(path) as slide:
            tiling = tile_slide(path, cfg, slide=slide)
            patches = read_grid(tiling.grid, slide=slide)  # (N, 3, P, P) uint8

    Args:
        path: slide file.
        cfg: tiling parameters.
        slide_id: identifier; defaults to the file stem.
        label: slide label to store with the grid.
        split: split to store with the grid.
        reader: opens the slide, ``reader(path)`` (``None``: :class:`~wsi.reader.Slide` with ``cfg.backend``).
        masker: the tissue mask of the low-resolution image, ``masker(image)`` (``None``:
            :func:`~wsi.tissue.tissue_mask` with ``cfg.mask``).
        grid: ``grid.spec(info)`` and ``grid.positions(info, spec)`` (``None``: :func:`~wsi.grid.resolve_patch_spec`
            and :func:`~wsi.grid.grid_positions` with ``cfg``'s patch size, level or mpp and stride).
            :mod:`wsi.components` describes these interfaces.
        slide: an open slide to use instead of opening ``path`` (left open).

    Raises:
        FileNotFoundError: missing file.
        SlideReadError: unreadable or truncated slide.
        ValueError: an impossible level/mpp request for this slide.
        NoTissueError: no patch passes ``cfg.tissue_threshold``.
    """
    cfg = cfg or TilingConfig()
    with open_with(reader, path, cfg.backend, slide) as slide:
        info = slide.info
        if grid is None:
            spec = resolve_patch_spec(info, cfg.patch_size, cfg.level, cfg.mpp, cfg.stride, cfg.mpp_rtol)
        else:
            spec = grid.spec(info)
        target_ds = max(1.0, min(float(cfg.mask_downsample), spec.footprint / 8.0))
        mimg = read_mask_image(slide, target_ds, cfg.use_associated_thumbnail, cfg.thumbnail_size)
    mask = tissue_mask(mimg.image, cfg.mask) if masker is None else masker(mimg.image)
    if grid is None:
        positions = grid_positions(info.dimensions[0][0], info.dimensions[0][1], spec.footprint, spec.stride)
    else:
        positions = grid.positions(info, spec)
    fractions = patch_tissue_fractions(mask, info.dimensions[0], positions, spec.footprint)
    keep = fractions >= cfg.tissue_threshold
    if not mask.any() or not keep.any():
        raise NoTissueError(
            f"no tissue in '{path}': {mask.mean():.1%} of the mask is tissue and none of {len(positions)} patches "
            f"has a tissue fraction >= {cfg.tissue_threshold}."
        )
    # a masker of the user's own is recorded by its definition (its thresholds are its own business)
    masker_record = cfg.components.get("masker_def")
    grid_ = PatchGrid(
        slide_id=slide_id or os.path.splitext(os.path.basename(str(path)))[0],
        slide_path=info.path,
        label=label,
        split=split,
        info=info,
        spec=spec,
        coords=positions[keep],
        tissue_fraction=fractions[keep],
        tissue_threshold=float(cfg.tissue_threshold),
        mask={
            "source": mimg.source,
            "downsample": [round(d, 4) for d in mimg.downsample],
            "shape": list(mask.shape),
            "tissue_fraction": round(float(mask.mean()), 4),
            "config": cfg.mask.to_dict() if masker_record is None else {"masker_def": masker_record},
        },
    )
    return SlideTiling(grid=grid_, mask=mask, mask_image=mimg, n_candidates=len(positions), reader=reader)
