"""Offline MedMNIST loading by flag: ``<flag>.npz`` (28 px) or ``<flag>_<size>.npz`` from a local directory.

Dataset facts (task, channels, label names, split sizes) come from ``medmnist.INFO``; pixel data never leaves
the local directory, so this works without internet.
"""

from __future__ import annotations

import contextlib
import io
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .dataset import DataError, RealDataset, images_to_tensor, normalise, split_stats

__all__ = ["MEDMNIST_SIZES", "SPLITS", "load_medmnist", "load_npz_arrays", "medmnist_info", "medmnist_path"]

MEDMNIST_SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")


@lru_cache(maxsize=1)
def _info_table() -> dict:
    # medmnist's package __init__ imports its torchvision datasets and prints a hint when torchvision is absent;
    # only the INFO table is needed here, so that print is swallowed.
    with contextlib.redirect_stdout(io.StringIO()):
        from medmnist.info import INFO
    return INFO


def medmnist_info(flag: str) -> dict:
    """The ``medmnist.INFO`` entry of ``flag``; an unknown flag raises a ``KeyError`` listing the valid flags."""
    table = _info_table()
    key = str(flag).lower()
    if key not in table:
        raise KeyError(f"unknown MedMNIST flag '{flag}'; valid flags: {', '.join(sorted(table))}.")
    return table[key]


def is_3d(flag: str) -> bool:
    return str(flag).lower().endswith("3d")


def medmnist_path(flag: str, root: str | Path, size: int = 28) -> Path:
    """Where the file of ``flag`` at ``size`` must be; a missing file raises with the flags found in ``root``."""
    medmnist_info(flag)
    if int(size) not in MEDMNIST_SIZES:
        raise ValueError(f"size must be one of {MEDMNIST_SIZES} (the sizes MedMNIST ships), got {size}.")
    root = Path(root)
    name = f"{flag.lower()}.npz" if int(size) == 28 else f"{flag.lower()}_{int(size)}.npz"
    path = root / name
    if not path.is_file():
        found = sorted(p.stem for p in root.glob("*.npz")) if root.is_dir() else []
        where = f"directory '{root.resolve()}'" + ("" if root.is_dir() else " (which does not exist)")
        raise FileNotFoundError(
            f"MedMNIST file '{name}' not found in {where}. Files found there: {found or 'none'}. "
            f"Get it with medmnist's download (needs internet): "
            f"python -c \"import medmnist; medmnist.{medmnist_info(flag)['python_class']}"
            f"(split='train', download=True, size={int(size)}, root='{root}')\"."
        )
    return path


def load_npz_arrays(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``<split>_images`` and ``<split>_labels`` from an ``.npz``; corrupt files and wrong keys say so."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'.")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"array file '{path}' does not exist.")
    keys = (f"{split}_images", f"{split}_labels")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataError(
                    f"'{path}' lacks the keys {missing}; expected "
                    f"{[f'{s}_{k}' for s in SPLITS for k in ('images', 'labels')]}, found {sorted(npz.files)}."
                )
            images, labels = npz[keys[0]], npz[keys[1]]
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise DataError(f"'{path}' is not a readable .npz archive ({type(e).__name__}: {e}).") from e
    if len(images) != len(labels):
        raise DataError(f"'{path}': {keys[0]} has {len(images)} entries but {keys[1]} has {len(labels)}.")
    return images, labels


def _labels_to_tensor(labels: np.ndarray, multilabel: bool, path: Path, split: str) -> torch.Tensor:
    arr = np.asarray(labels)
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"'{path}': {split}_labels must be numeric, got dtype {arr.dtype}.")
    if multilabel:
        return torch.from_numpy(arr.reshape(len(arr), -1).astype(np.int64))
    if arr.ndim == 2 and arr.shape[1] != 1:
        raise DataError(f"'{path}': {split}_labels must have shape (N,) or (N, 1), got {arr.shape}.")
    return torch.from_numpy(arr.reshape(-1).astype(np.int64))


def load_medmnist(flag: str, split: str = "train", root: str | Path = ".", size: int = 28) -> RealDataset:
    """Load one split of a MedMNIST dataset (2D or 3D) offline.

    Images are scaled to [0, 1] and normalised per channel with the mean/std of the train split, which the
    returned dataset records. A file whose split sizes differ from ``medmnist.INFO`` loads with a warning.

    Args:
        flag: MedMNIST flag, e.g. ``breastmnist`` or ``organmnist3d``.
        split: ``train``, ``val`` or ``test``.
        root: directory holding ``<flag>.npz`` / ``<flag>_<size>.npz``.
        size: 28, 64, 128 or 224.

    Raises:
        KeyError: unknown flag. FileNotFoundError: file missing. DataError: corrupt/wrong-keyed file, bad labels.
    """
    info = medmnist_info(flag)
    path = medmnist_path(flag, root, size)
    spatial_dims = 3 if is_3d(flag) else 2
    images, labels = load_npz_arrays(path, split)
    expected = info["n_samples"][split]
    if len(images) != expected:
        warnings.warn(
            f"'{path}': the {split} split has {len(images)} images but medmnist.INFO says {expected}; "
            "this is not the official file (numbers are not comparable with published ones).",
            stacklevel=2,
        )
    multilabel = "multi-label" in info["task"]
    x = images_to_tensor(images, spatial_dims, name=f"{path}:{split}_images")
    if x.shape[1] != info["n_channels"]:
        raise DataError(f"'{path}': expected {info['n_channels']} channel(s) for {flag}, got {x.shape[1]}.")
    expected_spatial = (int(size),) * spatial_dims
    if tuple(x.shape[2:]) != expected_spatial:
        raise DataError(f"'{path}': expected images of size {expected_spatial}, got {tuple(x.shape[2:])}.")
    if split == "train":
        mean, std = split_stats(x)
    else:
        train_images, _ = load_npz_arrays(path, "train")
        mean, std = split_stats(images_to_tensor(train_images, spatial_dims))
    names = [info["label"][str(i)] for i in range(len(info["label"]))]
    return RealDataset(
        images=normalise(x, mean, std),
        labels=_labels_to_tensor(labels, multilabel, path, split),
        num_classes=len(names),
        class_names=names,
        mean=mean,
        std=std,
        name=flag.lower(),
        split=split,
        task=info["task"],
        source=str(path),
        extra={"size": int(size), "n_samples_info": info["n_samples"]},
    )
