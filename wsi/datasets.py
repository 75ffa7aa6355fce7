"""Patch datasets over saved grids, built on MONAI's ``PatchWSIDataset``.

MONAI's dataset re-opens an openslide slide for every patch (to keep openslide's tile cache from growing). Here each
worker process keeps its own small LRU of open slides instead: a slide is opened once per worker, the number of open
handles (and their caches) is bounded, and a forked worker never reuses its parent's file handles.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import PatchWSIDataset
from PIL import Image

from .grid import PatchGrid

__all__ = ["SlidePatchDataset", "grid_to_data", "load_grids"]


def load_grids(grids: Sequence[PatchGrid | str | os.PathLike] | str | os.PathLike) -> list[PatchGrid]:
    """Grids from objects, JSON paths, or a tiling output directory (its ``coords/*.json``)."""
    if isinstance(grids, (str, os.PathLike)):
        root = Path(grids)
        folder = root / "coords" if (root / "coords").is_dir() else root
        files = sorted(folder.glob("*.json"))
        if not files:
            raise FileNotFoundError(f"no patch grids (*.json) in '{folder}'; run the wsi_tiling bundle first.")
        grids = files
    return [g if isinstance(g, PatchGrid) else PatchGrid.load(g) for g in grids]


def grid_to_data(grid: PatchGrid, label: Any = None) -> list[dict[str, Any]]:
    """One MONAI ``PatchWSIDataset`` item per patch of ``grid`` (location is ``(y, x)`` level-0, top-left)."""
    spec = grid.spec
    label = grid.label if label is None else label
    return [
        {
            "image": grid.slide_path,
            "location": (int(y), int(x)),
            "size": (spec.read_size, spec.read_size),
            "level": spec.level,
            "patch_size": spec.patch_size,
            "label": label,
            "slide_id": grid.slide_id,
            "patch_index": i,
            "coord": (int(x), int(y)),
        }
        for i, (x, y) in enumerate(grid.coords)
    ]


def _numeric(label: Any) -> float | None:
    try:
        return float(label)
    except (TypeError, ValueError):
        return None


class SlidePatchDataset(PatchWSIDataset):
    """The kept patches of one or more slides, for training or feature extraction.

    Each item is ``{"image": MetaTensor (3, P, P) uint8, "label": float tensor (if included), ...}``; the image's
    metadata carries ``slide_id``, ``patch_index`` and ``coord`` (level-0 ``(x, y)``). Patches read at a finer level
    for a requested mpp are resized to ``patch_size`` (antialiased bilinear).

    Args:
        grids: grids, grid JSON paths, or a tiling output directory.
        backend: MONAI ``WSIReader`` backend.
        transform: MONAI/torch transform applied to each item dict.
        include_label: add ``"label"``; by default when every slide label is numeric. Text labels need ``label_map``.
        label_map: maps slide labels (as written in the CSV) to numbers.
        max_open_slides: open slides kept per worker process.
        reader_kwargs: more arguments for ``monai.data.WSIReader``.
    """

    def __init__(
        self,
        grids: Sequence[PatchGrid | str | os.PathLike] | str | os.PathLike,
        backend: str = "openslide",
        transform: Callable | None = None,
        include_label: bool | None = None,
        label_map: dict[Any, float] | None = None,
        max_open_slides: int = 16,
        **reader_kwargs: Any,
    ) -> None:
        self.grids = load_grids(grids)
        data: list[dict[str, Any]] = []
        for g in self.grids:
            label = g.label
            if label_map is not None:
                if label not in label_map and str(label) not in label_map:
                    raise KeyError(f"label '{label}' of slide '{g.slide_id}' is not in label_map {label_map}.")
                label = label_map.get(label, label_map.get(str(label)))
            data.extend(grid_to_data(g, label=label))
        numeric = all(_numeric(d["label"]) is not None for d in data)
        if include_label is None:
            include_label = numeric
        elif include_label and not numeric:
            bad = sorted({str(d["label"]) for d in data if _numeric(d["label"]) is None})
            raise ValueError(f"slide labels {bad} are not numbers; pass label_map to convert them.")
        if include_label:
            for d in data:
                d["label"] = _numeric(d["label"])
        super().__init__(
            data,
            patch_size=None,
            patch_level=None,
            transform=transform,
            include_label=include_label,
            center_location=False,
            additional_meta_keys=["slide_id", "patch_index", "coord"],
            reader=backend,
            **reader_kwargs,
        )
        if transform is None:
            # MONAI wraps None in an empty Compose whose truth test rebuilds it on every item (~0.1 ms per patch)
            self.transform = None
        self.max_open_slides = max(1, int(max_open_slides))
        self._owner_pid = os.getpid()
        self._handles: OrderedDict[str, Any] = OrderedDict()

    # MONAI keeps open objects in ``wsi_object_dict``; ours live in a per-process LRU
    def _get_wsi_object(self, sample: dict) -> Any:
        if self._owner_pid != os.getpid():  # forked DataLoader worker: the parent's handles are not ours to use
            self._handles = OrderedDict()
            self._owner_pid = os.getpid()
        path = sample["image"]
        handle = self._handles.pop(path, None)
        if handle is None:
            handle = self.wsi_reader.read(path)
            while len(self._handles) >= self.max_open_slides:
                _, old = self._handles.popitem(last=False)
                if hasattr(old, "close"):
                    old.close()
        self._handles[path] = handle
        return handle

    def _get_data(self, sample: dict) -> tuple[np.ndarray, dict]:
        wsi = self._get_wsi_object(sample)
        image, meta = self.wsi_reader.get_data(
            wsi=wsi, location=self._get_location(sample), size=self._get_size(sample), level=self._get_level(sample)
        )
        out = int(sample["patch_size"])
        if image.shape[-1] != out or image.shape[-2] != out:
            hwc = np.moveaxis(np.asarray(image), 0, -1)
            image = np.moveaxis(np.asarray(Image.fromarray(hwc).resize((out, out), Image.BILINEAR)), -1, 0)
            meta["spatial_shape"] = np.asarray(image.shape[1:])
        if isinstance(image, np.ndarray) and not image.flags.writeable:
            image = image.copy()  # PIL-backed arrays are read-only; torch warns on (and must not share) those
        return image, meta

    def close(self) -> None:
        """Close the slides this process opened."""
        while self._handles:
            _, handle = self._handles.popitem()
            if hasattr(handle, "close"):
                handle.close()

    def __getstate__(self) -> dict[str, Any]:
        # open slide handles cannot be pickled (spawned DataLoader workers); each worker reopens its own
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        state["wsi_object_dict"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._owner_pid = os.getpid()
