"""SyntheticSet: the product of every distiller and coreset (images, hard or soft labels, learned lr, metadata)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.transforms import IdentityTransform

from ..plotting import DPI, new_figure, save_figure
from ..utils import atomic_torch_save, load_torch_file
from .dataset import DataError

__all__ = ["SyntheticSet"]

FORMAT_VERSION = 1
_GAP = 2  # white pixels between the tiles of the PNG grid (before upscaling)
_LABEL_PAD = 6  # pixels around the class-name column of the PNG grid


@dataclass
class SyntheticSet:
    """A small (synthetic or selected) training set.

    Attributes:
        images: (N, C, H, W) or (N, C, D, H, W), in the normalised units of the real data (``meta['mean']``,
            ``meta['std']``).
        labels: hard labels (N,) long, or soft labels (N, K) float class probabilities (rows sum to 1; methods that
            learn logits store their softmax).
        lr: learned learning rate (trajectory methods) or ``None``.
        meta: method, dataset, ipc, seed, package version, config hash, mean/std, class names, ...
    """

    images: torch.Tensor
    labels: torch.Tensor
    lr: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ facts
    @property
    def soft(self) -> bool:
        return self.labels.ndim == 2

    @property
    def num_classes(self) -> int:
        if "num_classes" in self.meta:
            return int(self.meta["num_classes"])
        return int(self.labels.shape[1]) if self.soft else int(self.labels.max()) + 1

    @property
    def hard_labels(self) -> torch.Tensor:
        """Class indices (argmax of soft labels)."""
        return self.labels.argmax(dim=1) if self.soft else self.labels

    @property
    def spatial_dims(self) -> int:
        return self.images.ndim - 2

    @property
    def ipc(self) -> int:
        """The images per class the set was made for: ``meta['ipc']``, else the largest class count of its labels.

        Learned soft labels may change class (DATM's do), so counting their argmax would misstate the budget.
        """
        if self.meta.get("ipc") is not None:
            return int(self.meta["ipc"])
        return int(torch.bincount(self.hard_labels, minlength=self.num_classes).max())

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def validate(self, source: str = "SyntheticSet") -> None:
        """Check shapes and types; raise a :class:`DataError` that says what is wrong."""
        if not isinstance(self.images, torch.Tensor) or self.images.ndim not in (4, 5):
            shape = tuple(self.images.shape) if isinstance(self.images, torch.Tensor) else type(self.images).__name__
            raise DataError(f"{source}: 'images' must be a tensor (N, C, H, W) or (N, C, D, H, W), got {shape}.")
        if not self.images.is_floating_point():
            raise DataError(f"{source}: 'images' must be floating point, got {self.images.dtype}.")
        n_bad = int((~torch.isfinite(self.images.detach())).sum())
        if n_bad:
            raise DataError(
                f"{source}: {n_bad} of {self.images.numel()} image values are NaN or infinite; the set is corrupt "
                "(a diverged distillation or non-finite input data) and cannot be used."
            )
        if not isinstance(self.labels, torch.Tensor) or self.labels.ndim not in (1, 2):
            raise DataError(f"{source}: 'labels' must be a tensor (N,) of class indices or (N, K) soft labels.")
        if self.labels.shape[0] != self.images.shape[0]:
            raise DataError(
                f"{source}: {self.images.shape[0]} images but {self.labels.shape[0]} labels; they must match."
            )
        if self.labels.ndim == 1 and self.labels.is_floating_point():
            raise DataError(f"{source}: hard 'labels' must be integer class indices, got {self.labels.dtype}.")
        if self.labels.ndim == 2 and not self.labels.is_floating_point():
            raise DataError(f"{source}: soft 'labels' (N, K) must be floating point, got {self.labels.dtype}.")
        if self.labels.ndim == 2 and self.labels.numel():
            if not bool(torch.isfinite(self.labels.detach()).all()):
                raise DataError(f"{source}: soft labels contain NaN or infinite values.")
            rows = self.labels.detach().float().sum(dim=1)
            if bool((self.labels < 0).any()) or not torch.allclose(rows, torch.ones_like(rows), atol=1e-3):
                raise DataError(
                    f"{source}: soft labels must be class probabilities (non-negative, rows summing to 1); "
                    "store softmax(logits)."
                )
        k = self.meta.get("num_classes")
        if k is not None:
            if self.labels.ndim == 2 and self.labels.shape[1] != int(k):
                raise DataError(f"{source}: soft labels have {self.labels.shape[1]} columns, meta says {k} classes.")
            if self.labels.ndim == 1 and self.labels.numel() and int(self.labels.max()) >= int(k):
                raise DataError(f"{source}: label {int(self.labels.max())} out of range for {k} classes.")
        if self.labels.ndim == 1 and self.labels.numel() and int(self.labels.min()) < 0:
            raise DataError(f"{source}: labels must be >= 0.")
        if self.lr is not None and not (math.isfinite(float(self.lr)) and float(self.lr) > 0):
            raise DataError(f"{source}: learned lr must be a positive finite number, got {self.lr}.")
        if not isinstance(self.meta, dict):
            raise DataError(f"{source}: 'meta' must be a dict.")

    # --------------------------------------------------------------- file I/O
    def state(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "images": self.images.detach().cpu().clone(),
            "labels": self.labels.detach().cpu().clone(),
            "lr": None if self.lr is None else float(self.lr),
            "meta": dict(self.meta),
        }

    def save(self, path: str | Path) -> Path:
        """Save atomically (temporary file, then rename) as a plain dict of tensors."""
        path = Path(path)
        atomic_torch_save(self.state(), path)
        return path

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> SyntheticSet:
        """Load and validate a file written by :meth:`save`; any problem names the file and what is wrong."""
        path = Path(path)
        state = load_torch_file(path, "SyntheticSet", DataError, map_location)
        if not isinstance(state, dict):
            raise DataError(f"'{path}': expected a dict with images/labels/lr/meta, got {type(state).__name__}.")
        missing = [k for k in ("images", "labels") if k not in state]
        if missing:
            raise DataError(f"'{path}': missing keys {missing}; found {sorted(state)}.")
        obj = cls.__new__(cls)
        obj.images, obj.labels = state["images"], state["labels"]
        obj.lr, obj.meta = state.get("lr"), state.get("meta") or {}
        obj.validate(source=f"'{path}'")
        return obj

    # ---------------------------------------------------------------- picture
    def _class_names(self) -> list[str]:
        names = self.meta.get("class_names") or []
        names = [str(n) for n in names][: self.num_classes]
        names += [f"class {c}" for c in range(len(names), self.num_classes)]
        # Long MedMNIST names ("normal, benign") are cut so the label column stays narrow.
        return [f"{c}: {n[:18]}" for c, n in enumerate(names)]

    def denormalised(self) -> torch.Tensor:
        """Images in [0, 1] display units, using the mean/std recorded in ``meta``."""
        x = self.images.detach().float().cpu()
        mean, std = self.meta.get("mean"), self.meta.get("std")
        if mean is not None and std is not None:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            x = x * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)
        else:
            lo = x.amin(dim=tuple(range(1, x.ndim)), keepdim=True)
            hi = x.amax(dim=tuple(range(1, x.ndim)), keepdim=True)
            x = (x - lo) / (hi - lo).clamp_min(1e-8)
        return x.clamp(0, 1)

    def to_png(self, path: str | Path, max_per_class: int = 20, tile_px: int = 64, row_names: bool = True) -> Path:
        """Draw a class-by-ipc grid (rows = classes); 3D images show their three orthogonal middle slices.

        The images are placed pixel for pixel (upscaled by a whole factor with nearest neighbour, never resampled),
        so the PNG shows exactly the stored values; matplotlib writes the class names.

        Args:
            path: PNG file to write (atomically).
            max_per_class: at most this many images per class row.
            tile_px: minimum drawn size of one image (small images are upscaled with nearest neighbour).
            row_names: write each row's class index and name in a column on the left.

        Returns:
            ``path`` as a :class:`~pathlib.Path`.
        """
        labels = self.hard_labels.cpu()
        shown = self.denormalised()  # [0, 1] display units
        rows = [[shown[i] for i in torch.nonzero(labels == c).flatten().tolist()[:max_per_class]]
                for c in range(self.num_classes)]
        return image_grid_png(rows, path, self._class_names() if row_names else [], tile_px=tile_px)


def image_grid_png(rows: list[list[torch.Tensor]], path: str | Path, names: list[str] | None = None,
                   tile_px: int = 64) -> Path:
    """Draw images in rows, pixel for pixel, with an optional name left of each row; write a PNG atomically.

    Args:
        rows: per row, images (C, H, W) or (C, D, H, W) in [0, 1] display units; 3D images show their three
            orthogonal middle slices.
        path: PNG file to write.
        names: one label per row (empty or ``None``: no label column).
        tile_px: minimum drawn size of one image (small images are upscaled with nearest neighbour).
    """
    tiles = [[_tile(img.detach().float().cpu().clamp(0, 1)) for img in row] for row in rows]
    flat = [t for row in tiles for t in row] or [np.ones((1, 1, 3), dtype=np.float32)]
    th = max(t.shape[0] for t in flat)
    tw = max(t.shape[1] for t in flat)
    scale = max(1, math.ceil(tile_px / min(th, tw)))
    mosaic = _mosaic(tiles, (th, tw), _GAP)
    mosaic = np.repeat(np.repeat(mosaic, scale, axis=0), scale, axis=1)
    fig = _grid_figure(mosaic, list(names or []), row_px=(th + _GAP) * scale, first_centre=(_GAP + th / 2) * scale)
    return save_figure(fig, path)


def _mosaic(rows: list[list[np.ndarray]], tile: tuple[int, int], gap: int) -> np.ndarray:
    """Tiles ``rows[r][c]`` ((h, w, 3) floats in [0, 1]) in cells of ``tile`` pixels on white -> (H, W, 3) uint8."""
    th, tw = tile
    ncols = max(1, max(len(r) for r in rows))
    canvas = np.ones(((th + gap) * len(rows) + gap, (tw + gap) * ncols + gap, 3), dtype=np.float32)
    for r, row in enumerate(rows):
        for c, t in enumerate(row):
            y0, x0 = gap + r * (th + gap), gap + c * (tw + gap)
            canvas[y0 : y0 + t.shape[0], x0 : x0 + t.shape[1]] = t
    return (canvas * 255).round().astype(np.uint8)


def _grid_figure(mosaic: np.ndarray, names: list[str], row_px: int, first_centre: float) -> Figure:
    """A figure of ``mosaic`` at its own pixel size, with ``names`` (one per grid row) in a column on its left.

    Args:
        mosaic: (H, W, 3) uint8 image grid.
        names: row labels, top to bottom; empty for none (the figure is then exactly the mosaic).
        row_px: height of one grid row in pixels.
        first_centre: pixels from the top to the middle of the first row.
    """
    h, w = mosaic.shape[:2]
    fig = new_figure((w, h))
    label_w = 0
    if names:
        # As large as the rows allow (10 pt at most) so that neighbouring names never touch.
        font_pt = float(np.clip(0.5 * row_px * 72 / DPI, 5, 10))
        texts = [
            fig.text(_LABEL_PAD, h - first_centre - r * row_px, name, transform=IdentityTransform(),
                     ha="left", va="center", fontsize=font_pt)
            for r, name in enumerate(names)
        ]
        renderer = fig.canvas.get_renderer()
        label_w = math.ceil(max(t.get_window_extent(renderer).width for t in texts)) + 2 * _LABEL_PAD
        # Texts sit at fixed pixels from the bottom-left corner, so widening the figure does not move them.
        fig.set_size_inches((w + label_w) / DPI, h / DPI)
    # figimage draws the array unresampled, one array pixel per output pixel.
    fig.figimage(mosaic, xo=label_w, yo=0, origin="upper")
    return fig


def _to_rgb(img2d: torch.Tensor) -> np.ndarray:
    """(C, H, W) -> (H, W, 3) numpy."""
    c = img2d.shape[0]
    if c == 1:
        img2d = img2d.expand(3, -1, -1)
    elif c != 3:
        img2d = img2d[:1].expand(3, -1, -1)
    return img2d.permute(1, 2, 0).numpy()


def _tile(img: torch.Tensor) -> np.ndarray:
    if img.ndim == 3:
        return _to_rgb(img)
    # 3D (C, D, H, W): axial, coronal and sagittal middle slices side by side.
    _, d, h, w = img.shape
    views = [img[:, d // 2], img[:, :, h // 2], img[:, :, :, w // 2]]
    height = max(v.shape[1] for v in views)
    parts = []
    for v in views:
        rgb = _to_rgb(v)
        if rgb.shape[0] < height:
            rgb = np.pad(rgb, ((0, height - rgb.shape[0]), (0, 0), (0, 0)), constant_values=1.0)
        parts.append(rgb)
        parts.append(np.ones((height, 1, 3), dtype=rgb.dtype))
    return np.concatenate(parts[:-1], axis=1)
