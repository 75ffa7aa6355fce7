"""One entry point for every kind of labelled dataset: MedMNIST flags, user ``.npz`` arrays, volume CSVs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .arrays import load_arrays
from .dataset import RealDataset
from .medmnist import load_medmnist
from .volumes import load_volume_csv

__all__ = ["load_dataset"]


def _npz(path: Path, split: str, **_: Any) -> RealDataset:
    return load_arrays(path, split=split)


def _csv(path: Path, split: str, size: int = 28, **_: Any) -> RealDataset:
    return load_volume_csv(path, split=split, spatial_size=(size,) * 3)


_BY_SUFFIX: dict[str, Callable[..., RealDataset]] = {".npz": _npz, ".csv": _csv}


def load_dataset(dataset: str, split: str = "train", dataset_dir: str | Path = ".", size: int = 28) -> RealDataset:
    """Load ``split`` of ``dataset``.

    Args:
        dataset: a MedMNIST flag (read from ``dataset_dir``), or a path ending in ``.npz`` (user arrays with the
            MedMNIST keys) or ``.csv`` (3D volumes listed as ``path,label[,split]``, resized to ``size``³).
        split: ``train``, ``val`` or ``test``.
        dataset_dir: directory of MedMNIST files.
        size: MedMNIST size, or the cube edge volumes are resized to.
    """
    suffix = Path(str(dataset)).suffix.lower()
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix](Path(dataset), split, size=int(size))
    return load_medmnist(str(dataset), split=split, root=dataset_dir, size=int(size))
