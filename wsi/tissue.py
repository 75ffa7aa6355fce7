"""Tissue detection on a low-resolution RGB image: HSV saturation + Otsu, pen-mark removal, morphology.

H&E tissue is saturated (pink/purple), glass is grey-white (low saturation), so a saturation threshold separates them.
Pen marks are also saturated, so they are removed first by hue: ink is red, green or blue, while H&E stays in the
pink-purple band (hue about 0.65-0.95).
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from skimage.color import rgb2hsv
from skimage.filters import median, threshold_otsu
from skimage.measure import label
from skimage.morphology import closing, dilation, disk, remove_small_holes, remove_small_objects

__all__ = ["TissueMaskConfig", "pen_mask", "tile_tissue_fraction", "tissue_fraction", "tissue_mask"]


@dataclass
class TissueMaskConfig:
    """Thresholds of :func:`tissue_mask`. Sizes are in pixels of the image the mask is computed on.

    Args:
        threshold: saturation threshold in [0, 1], or ``"otsu"`` to compute it per slide.
        min_saturation: floor under the Otsu threshold; on a slide (or tile) that is all glass, Otsu still splits
            the noise in two, and this floor keeps that noise out of the mask.
        max_saturation: ceiling over the Otsu threshold; on a slide of strongly stained tissue Otsu splits pale
            tissue from dark tissue instead of glass from tissue (glass stays below ~0.05).
        min_value: pixels darker than this HSV value are not tissue (scanner borders, transparent regions, black ink).
        median_radius: radius of the median filter applied to the saturation channel (removes dust and noise).
        closing_radius: radius of the morphological closing that joins nuclei and stroma into one tissue region.
        min_object_area: connected tissue regions up to this many pixels are dropped (debris, dust).
        min_hole_area: holes up to this many pixels inside tissue are filled.
        pen_filter: remove pen marks before thresholding.
        pen_rules: ink colours as ``(hue_lo, hue_hi, min_saturation, max_value)`` in HSV [0, 1]; ``hue_lo > hue_hi``
            wraps around red (hue 0). The defaults: saturated red ink; dark red-violet ink (H&E is never both dark
            and red: dark tissue is hematoxylin-blue, eosin is pale); green/blue ink.
        pen_min_area: pen components up to this many pixels are ignored; small saturated red specks are usually
            red blood cells, not ink.
        pen_halo_hue: hue band ``(lo, hi)`` of the pale, blurred rim of red strokes: pixels of that hue (and above
            ``min_saturation``) connected to ink are ink too. ``None`` turns this off.
        pen_margin: the pen mask is finally dilated by this radius (anti-aliased stroke edges).
    """

    threshold: float | str = "otsu"
    min_saturation: float = 0.07
    max_saturation: float = 0.15
    min_value: float = 0.12
    median_radius: int = 1
    closing_radius: int = 2
    min_object_area: int = 16
    min_hole_area: int = 16
    pen_filter: bool = True
    pen_rules: tuple[tuple[float, float, float, float], ...] = field(
        default_factory=lambda: ((0.95, 0.03, 0.5, 1.0), (0.9, 0.04, 0.4, 0.5), (0.2, 0.62, 0.5, 1.0))
    )
    pen_min_area: int = 64
    pen_halo_hue: tuple[float, float] | None = (0.94, 0.04)
    pen_margin: int = 2

    @classmethod
    def from_any(cls, value: TissueMaskConfig | dict[str, Any] | None) -> TissueMaskConfig:
        """Build from a config dict (bundle JSON), pass an instance through, ``None`` gives the defaults."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"mask options must be a dict or TissueMaskConfig, got {type(value).__name__}.")
        unknown = set(value) - set(cls.__dataclass_fields__)
        if unknown:
            valid = sorted(cls.__dataclass_fields__)
            raise KeyError(f"unknown tissue mask option(s) {sorted(unknown)}; valid: {valid}.")
        kwargs = dict(value)
        if "pen_rules" in kwargs:
            rules = tuple(tuple(float(v) for v in r) for r in kwargs["pen_rules"])
            if any(len(r) != 4 for r in rules):
                raise ValueError(f"each pen rule is (hue_lo, hue_hi, min_saturation, max_value), got {rules}.")
            kwargs["pen_rules"] = rules
        if kwargs.get("pen_halo_hue") is not None:
            kwargs["pen_halo_hue"] = tuple(float(v) for v in kwargs["pen_halo_hue"])
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pen_rules"] = [list(r) for r in self.pen_rules]
        d["pen_halo_hue"] = list(self.pen_halo_hue) if self.pen_halo_hue is not None else None
        return d


def _remove_small(mask: np.ndarray, area: int, holes: bool) -> np.ndarray:
    """skimage renamed ``min_size``/``area_threshold`` to ``max_size`` in 0.26; support both (pyproject: >=0.22)."""
    if area <= 0:
        return mask
    fn = remove_small_holes if holes else remove_small_objects
    params = inspect.signature(fn).parameters
    if "max_size" in params:
        return fn(mask, max_size=area)
    return fn(mask, area + 1) if not holes else fn(mask, area_threshold=area + 1)


def _in_hue_band(hue: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (hue >= lo) | (hue <= hi) if lo > hi else (hue >= lo) & (hue <= hi)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"expected an RGB(A) image of shape (H, W, 3|4), got shape {image.shape}.")
    return image[..., :3]


def pen_mask(hsv: np.ndarray, cfg: TissueMaskConfig) -> np.ndarray:
    """Pixels that are ink (red/green/blue pen), from an HSV image in [0, 1].

    Args:
        hsv: (H, W, 3) float HSV image.
        cfg: thresholds.

    Returns:
        Boolean (H, W) mask, ``True`` on ink.
    """
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    ink = np.zeros(hue.shape, dtype=bool)
    for lo, hi, min_sat, max_val in cfg.pen_rules:
        ink |= _in_hue_band(hue, lo, hi) & (sat >= min_sat) & (val <= max_val)
    ink = _remove_small(ink, cfg.pen_min_area, holes=False)
    if cfg.pen_halo_hue is not None and ink.any():
        rim = (_in_hue_band(hue, *cfg.pen_halo_hue) & (sat > cfg.min_saturation)) | ink
        regions = label(rim)
        touching = np.unique(regions[ink])
        ink = np.isin(regions, touching[touching > 0])
    if cfg.pen_margin > 0 and ink.any():
        ink = dilation(ink, disk(cfg.pen_margin))
    return ink


def tissue_mask(image: np.ndarray, cfg: TissueMaskConfig | None = None) -> np.ndarray:
    """Tissue mask of a low-resolution RGB image of a slide (or of a tile).

    Steps: HSV; median blur of saturation; pen marks removed by hue; saturation threshold (Otsu over the non-ink,
    non-dark pixels, clipped to ``[min_saturation, max_saturation]``); closing; small holes filled and small objects
    removed.

    Args:
        image: (H, W, 3) or (H, W, 4) uint8 image; alpha is ignored.
        cfg: thresholds; defaults to :class:`TissueMaskConfig`.

    Returns:
        Boolean (H, W) mask, ``True`` on tissue.
    """
    cfg = cfg or TissueMaskConfig()
    rgb = _as_rgb(image)
    hsv = rgb2hsv(rgb)
    sat_u8 = np.clip(hsv[..., 1] * 255.0, 0, 255).astype(np.uint8)
    if cfg.median_radius > 0:
        sat_u8 = median(sat_u8, disk(cfg.median_radius))
    sat = sat_u8.astype(np.float32) / 255.0

    candidates = hsv[..., 2] >= cfg.min_value
    if cfg.pen_filter:
        candidates &= ~pen_mask(hsv, cfg)
    if not candidates.any():
        return np.zeros(sat.shape, dtype=bool)

    if isinstance(cfg.threshold, str):
        if cfg.threshold.lower() != "otsu":
            raise ValueError(f"tissue mask threshold must be a number in [0, 1] or 'otsu', got '{cfg.threshold}'.")
        values = sat[candidates]
        thr = float(threshold_otsu(values)) if values.min() < values.max() else float(values.max())
        thr = max(min(thr, cfg.max_saturation), cfg.min_saturation)
    else:
        thr = float(cfg.threshold)

    mask = (sat > thr) & candidates
    if cfg.closing_radius > 0:
        mask = closing(mask, disk(cfg.closing_radius))
    mask = _remove_small(mask, cfg.min_hole_area, holes=True)
    mask = _remove_small(mask, cfg.min_object_area, holes=False)
    # closing and hole filling may have grown tissue back over ink and dark borders
    return mask & candidates


def tissue_fraction(image: np.ndarray, cfg: TissueMaskConfig | None = None) -> float:
    """Fraction of an image (e.g. one tile) that :func:`tissue_mask` calls tissue."""
    return float(tissue_mask(image, cfg).mean())


def tile_tissue_fraction(tile: np.ndarray, cfg: TissueMaskConfig | None = None, mask_size: int = 64) -> float:
    """Tissue fraction of one patch image, judged as the slide pipeline judges a patch.

    The slide pipeline sees a patch through a low-resolution mask (at least 8 mask pixels per patch side), so the
    tile is first reduced (area average) to ``mask_size`` pixels on its long side; the mask's morphology then acts at
    the same scale as on slides, instead of on single nuclei.

    Args:
        tile: ``(H, W, 3|4)`` uint8 image.
        cfg: thresholds.
        mask_size: long side of the reduced tile.
    """
    rgb = np.ascontiguousarray(_as_rgb(tile))
    h, w = rgb.shape[:2]
    scale = mask_size / max(h, w)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BOX))
    return tissue_fraction(rgb, cfg)
