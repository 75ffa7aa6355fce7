"""Open whole-slide images through MONAI's ``WSIReader`` and describe them in one small record.

A :class:`Slide` wraps one MONAI reader and one backend object (``openslide.OpenSlide``, ``tifffile.TiffFile`` or
``cucim.CuImage``): open once, read many regions. Every failure is raised as :class:`SlideReadError` naming the file.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import WSIReader

__all__ = ["BACKENDS", "SLIDE_SUFFIXES", "Slide", "SlideInfo", "SlideReadError", "open_slide"]

BACKENDS = ("openslide", "tifffile", "cucim")
# what openslide opens (tifffile/cucim read the TIFF-based ones)
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm")


class SlideReadError(RuntimeError):
    """A slide could not be opened or read; the message names the file and the reason."""


@dataclass(frozen=True)
class SlideInfo:
    """Facts about one slide.

    Attributes:
        path: absolute path of the file.
        backend: MONAI ``WSIReader`` backend that read it.
        level_count: number of pyramid levels.
        dimensions: ``(width, height)`` of each level, in pixels.
        downsamples: downsample factor of each level relative to level 0.
        mpp: level-0 microns per pixel ``(x, y)``, or ``None`` if the file does not say.
        objective_power: scanner objective magnification at level 0, or ``None``.
        vendor: format/vendor string where the backend gives one (openslide: ``aperio``, ``generic-tiff``, ...).
    """

    path: str
    backend: str
    level_count: int
    dimensions: tuple[tuple[int, int], ...]
    downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None
    objective_power: float | None
    vendor: str | None

    def level_mpp(self, level: int) -> tuple[float, float] | None:
        """Microns per pixel ``(x, y)`` at ``level`` (``None`` without level-0 mpp)."""
        if self.mpp is None:
            return None
        ds = self.downsamples[level]
        return (self.mpp[0] * ds, self.mpp[1] * ds)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dimensions"] = [list(wh) for wh in self.dimensions]
        d["downsamples"] = list(self.downsamples)
        d["mpp"] = list(self.mpp) if self.mpp is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SlideInfo:
        return cls(
            path=d["path"],
            backend=d["backend"],
            level_count=int(d["level_count"]),
            dimensions=tuple((int(w), int(h)) for w, h in d["dimensions"]),
            downsamples=tuple(float(x) for x in d["downsamples"]),
            mpp=tuple(d["mpp"]) if d.get("mpp") is not None else None,  # type: ignore[arg-type]
            objective_power=d.get("objective_power"),
            vendor=d.get("vendor"),
        )


class Slide:
    """One open slide: a MONAI ``WSIReader`` plus the backend object it returned.

    Args:
        path: slide file.
        backend: ``"openslide"`` (default), ``"tifffile"`` or ``"cucim"``.

    Raises:
        FileNotFoundError: the file does not exist.
        SlideReadError: the backend cannot open it (not a slide, truncated header, unsupported format).

    Note:
        MONAI's tifffile backend counts TIFF pages as levels and decodes a whole level per read; it is right for
        pyramidal TIFFs whose pages are the levels (as written by :mod:`wsi.cohort`). For SVS files, whose second
        page is a thumbnail, only the levels that match tifffile's pyramid are reported (level 0 for the shipped
        slides); use the openslide backend there.
    """

    def __init__(self, path: str | os.PathLike, backend: str = "openslide") -> None:
        self.path = Path(path)
        backend = str(backend).lower()
        if backend not in BACKENDS:
            raise ValueError(f"unknown WSI backend '{backend}'; valid: {', '.join(BACKENDS)}.")
        if not self.path.is_file():
            raise FileNotFoundError(f"slide file not found: '{self.path}'.")
        self.backend = backend
        # channel-last numpy: the tissue mask and thumbnails work on (H, W, 3) images
        self.reader = WSIReader(backend=backend, channel_dim=-1, mode="RGB")
        try:
            self.handle = self.reader.read(str(self.path))
        except Exception as e:  # backends raise their own exception types (OpenSlideError, TiffFileError, ...)
            raise SlideReadError(
                f"cannot open '{self.path}' as a whole-slide image ({backend} backend): {e} "
                "(not a slide, a truncated or damaged file, or a format this backend does not read)"
            ) from e
        try:
            self.info = self._describe()
        except Exception as e:
            self.close()
            raise SlideReadError(f"cannot read the pyramid of '{self.path}' ({backend} backend): {e}") from e

    # ----------------------------------------------------------------- facts
    def _describe(self) -> SlideInfo:
        r, h = self.reader, self.handle
        n = self._usable_levels()
        dims, downs = [], []
        for lvl in range(n):
            height, width = r.get_size(h, lvl)
            dims.append((int(width), int(height)))
            downs.append(float(r.get_downsample_ratio(h, lvl)))
        if dims[0][0] <= 0 or dims[0][1] <= 0:
            raise ValueError(f"level 0 has size {dims[0]}.")
        mpp = self._mpp()
        power = self._power()
        vendor = None
        if self.backend == "openslide":
            vendor = h.properties.get("openslide.vendor")
        return SlideInfo(
            path=str(self.path.resolve()),
            backend=self.backend,
            level_count=n,
            dimensions=tuple(dims),
            downsamples=tuple(downs),
            mpp=mpp,
            objective_power=power,
            vendor=vendor,
        )

    def _usable_levels(self) -> int:
        n = int(self.reader.get_level_count(self.handle))
        if self.backend != "tifffile":
            return n
        # MONAI counts pages; keep the leading pages that are also tifffile's pyramid levels (SVS page 1 is a
        # thumbnail, so MONAI's downsample for "level 1" would be that of the thumbnail)
        levels = self.handle.series[0].levels
        usable = 0
        for lvl in range(min(n, len(levels))):
            if tuple(self.handle.pages[lvl].shape[:2]) != tuple(levels[lvl].shape[:2]):
                break
            usable += 1
        if usable < n and usable < len(levels):
            warnings.warn(
                f"'{self.path}': the tifffile backend reads only its first {usable} level(s) correctly "
                "(pages are not the pyramid levels); use backend='openslide' for the others.",
                stacklevel=3,
            )
        return max(usable, 1)

    def _mpp(self) -> tuple[float, float] | None:
        try:
            y, x = self.reader.get_mpp(self.handle, 0)  # MONAI returns (y, x)
        except (ValueError, KeyError, AttributeError, TypeError):
            return None
        x, y = float(x), float(y)
        if not (math.isfinite(x) and math.isfinite(y)) or x <= 0 or y <= 0:
            return None
        return (x, y)

    def _power(self) -> float | None:
        try:
            p = float(self.reader.get_power(self.handle, 0))
        except (ValueError, KeyError, AttributeError, TypeError):
            return None
        return p if math.isfinite(p) and p > 0 else None

    # ----------------------------------------------------------------- reading
    def read_region(self, x: int, y: int, width: int, height: int, level: int = 0) -> np.ndarray:
        """Read an RGB region.

        Args:
            x: left edge in level-0 pixels.
            y: top edge in level-0 pixels.
            width: width at ``level``.
            height: height at ``level``.
            level: pyramid level.

        Returns:
            ``(height, width, 3)`` uint8 array.
        """
        if not 0 <= level < self.info.level_count:
            raise ValueError(f"'{self.path}' has levels 0..{self.info.level_count - 1}, level {level} was requested.")
        try:
            patch, _ = self.reader.get_data(
                self.handle, location=(int(y), int(x)), size=(int(height), int(width)), level=int(level)
            )
        except Exception as e:
            raise SlideReadError(
                f"cannot read region x={x}, y={y}, {width}x{height} at level {level} of '{self.path}': {e}"
            ) from e
        return np.asarray(patch)

    def read_patch(self, x: int, y: int, size: int, level: int = 0) -> np.ndarray:
        """Read a square RGB patch as an ``(size, size, 3)`` uint8 view, on the fast path of bulk reading.

        With openslide the region comes straight from the backend object: one copy out of the decoded RGBA buffer,
        where MONAI's reader converts to RGB, copies to numpy and moves the channel axis (three passes per patch).
        The pixels are the same (dropping alpha is what ``convert("RGB")`` does). Other backends go through
        :meth:`read_region`.

        Args:
            x: left edge in level-0 pixels.
            y: top edge in level-0 pixels.
            size: side at ``level``.
            level: pyramid level (not checked here: the grid that gives it was made for this slide).
        """
        if self.backend != "openslide":
            return self.read_region(x, y, size, size, level)
        try:
            rgba = np.asarray(self.handle.read_region((int(x), int(y)), int(level), (int(size), int(size))))
        except Exception as e:
            raise SlideReadError(
                f"cannot read region x={x}, y={y}, {size}x{size} at level {level} of '{self.path}': {e}"
            ) from e
        return rgba[..., :3]

    def read_level(self, level: int) -> np.ndarray:
        """Read a whole level as an ``(H, W, 3)`` uint8 array (use the small ones)."""
        w, h = self.info.dimensions[level]
        return self.read_region(0, 0, w, h, level)

    def thumbnail_size(self) -> tuple[int, int] | None:
        """``(width, height)`` of the scanner's stored thumbnail (openslide), if it has level 0's aspect ratio.

        Read from the properties: asking ``"thumbnail" in associated_images`` would decode the image to answer.
        """
        if self.backend != "openslide":
            return None
        props = self.handle.properties
        try:
            tw = int(props["openslide.associated.thumbnail.width"])
            th = int(props["openslide.associated.thumbnail.height"])
        except (KeyError, ValueError):
            return None
        w0, h0 = self.info.dimensions[0]
        if tw <= 0 or th <= 0 or abs((tw / th) / (w0 / h0) - 1.0) > 0.02:
            return None  # a thumbnail of another region (or of the whole glass) would misplace the mask
        return (tw, th)

    def associated_thumbnail(self) -> np.ndarray | None:
        """The scanner's stored thumbnail as ``(H, W, 3)`` uint8 (see :meth:`thumbnail_size`), else ``None``.

        Single-level files (e.g. CMU-1-Small-Region) have no small pyramid level, and decoding all of level 0 just to
        draw a tissue mask costs as much as reading every patch; the stored thumbnail is a few hundred KB.
        """
        if self.thumbnail_size() is None:
            return None
        try:
            return np.asarray(self.handle.associated_images["thumbnail"].convert("RGB"))
        except Exception:  # a damaged associated image is not fatal: the caller falls back to a level
            return None

    # ----------------------------------------------------------------- lifetime
    def close(self) -> None:
        handle, self.handle = getattr(self, "handle", None), None
        if handle is not None and hasattr(handle, "close"):
            handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide('{self.path}', backend='{self.backend}')"


def open_slide(path: str | os.PathLike, backend: str = "openslide") -> Slide:
    """Open ``path`` with MONAI's ``WSIReader`` (see :class:`Slide`)."""
    return Slide(path, backend=backend)
