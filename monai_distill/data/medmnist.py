"""Offline MedMNIST loading by flag: ``<flag>.npz`` (28 px) or ``<flag>_<size>.npz`` from a local directory.

Dataset facts (task, channels, label names, split sizes) come from ``medmnist.INFO``; pixel data never leaves
the local directory, so this works without internet.
"""

from __future__ import annotations

import contextlib
import io
import warnings
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .dataset import DataError, RealDataset, images_to_tensor, normalise, split_stats

__all__ = [
    "MEDMNIST_SIZES",
    "SPLITS",
    "load_medmnist",
    "load_npz_arrays",
    "load_npz_labels",
    "medmnist_info",
    "medmnist_path",
    "normalise_split",
    "train_stats",
]

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


def _read_npz(path: Path, keys: Sequence[str], required: bool = True) -> dict[str, np.ndarray]:
    """Read ``keys`` from an ``.npz`` (only those; members are decompressed on access).

    With ``required=False`` absent keys are skipped; otherwise they raise a :class:`DataError` that lists the
    MedMNIST keys expected and the keys found.
    """
    if not path.is_file():
        raise FileNotFoundError(f"array file '{path}' does not exist.")
    if not zipfile.is_zipfile(path):
        # np.load would try .npy and then pickle, and report garbage as "pickled (object) data".
        raise DataError(f"'{path}' is not a readable .npz archive (no zip structure: corrupt, truncated or not .npz).")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing and required:
                raise DataError(
                    f"'{path}' lacks the keys {missing}; expected "
                    f"{[f'{s}_{k}' for s in SPLITS for k in ('images', 'labels')]}, found {sorted(npz.files)}."
                )
            return {k: npz[k] for k in keys if k in npz.files}
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError) as e:
        raise DataError(f"'{path}' is not a readable .npz archive ({type(e).__name__}: {e}).") from e


def load_npz_arrays(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``<split>_images`` and ``<split>_labels`` from an ``.npz``; corrupt files and wrong keys say so."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'.")
    path = Path(path)
    keys = (f"{split}_images", f"{split}_labels")
    arrays = _read_npz(path, keys)
    images, labels = arrays[keys[0]], arrays[keys[1]]
    if len(images) != len(labels):
        raise DataError(f"'{path}': {keys[0]} has {len(images)} entries but {keys[1]} has {len(labels)}.")
    return images, labels


def load_npz_labels(path: str | Path) -> dict[str, np.ndarray]:
    """The ``<split>_labels`` arrays of every split present in an ``.npz``, without decompressing any images."""
    path = Path(path)
    arrays = _read_npz(path, [f"{s}_labels" for s in SPLITS], required=False)
    return {k[: -len("_labels")]: v for k, v in arrays.items()}


# Stats of a train split keyed by file identity: loading val/test (or the same split again) would otherwise
# decompress and reduce the whole train split each time, seconds for a 64^3 set.
_STATS_CACHE: OrderedDict[tuple, tuple[list[float], list[float]]] = OrderedDict()
_STATS_CACHE_SIZE = 32


def train_stats(
    path: str | Path, spatial_dims: int, train_images: torch.Tensor | np.ndarray | None = None
) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the train split of an ``.npz``, remembered per file (path, size, mtime).

    Args:
        path: the ``.npz`` file.
        spatial_dims: 2 or 3, to read the array layout.
        train_images: the train images when the caller already holds them (raw array or (N, C, ...) tensor).
    """
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, int(spatial_dims))
    if key in _STATS_CACHE:
        _STATS_CACHE.move_to_end(key)
    else:
        if train_images is None:
            train_images, _ = load_npz_arrays(path, "train")
        _STATS_CACHE[key] = split_stats(train_images, spatial_dims)
        while len(_STATS_CACHE) > _STATS_CACHE_SIZE:
            _STATS_CACHE.popitem(last=False)
    mean, std = _STATS_CACHE[key]
    return list(mean), list(std)


def normalise_split(
    x: torch.Tensor, path: str | Path, split: str, spatial_dims: int
) -> tuple[torch.Tensor, list[float], list[float]]:
    """Normalise ``x`` (a split of ``path`` as a float tensor, consumed in place) with the train split's stats.

    Returns:
        ``(normalised x, mean, std)``.
    """
    mean, std = train_stats(path, spatial_dims, x if split == "train" else None)
    if len(mean) != x.shape[1]:
        raise DataError(f"'{path}': the train split has {len(mean)} channel(s) but the {split} split has {x.shape[1]}.")
    return normalise(x, mean, std, inplace=True), mean, std


def _labels_to_tensor(labels: np.ndarray, multilabel: bool, path: Path, split: str) -> torch.Tensor:
    arr = np.asarray(labels)
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"'{path}': {split}_labels must be numeric, got dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
        # Casting would silently turn 0.5 into class 0 and NaN into an arbitrary integer.
        bad = arr[~(np.isfinite(arr) & (arr == np.round(arr)))]
        raise DataError(f"'{path}': {split}_labels must be whole numbers (class indices), found {bad[:5].tolist()}.")
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
    x, mean, std = normalise_split(x, path, split, spatial_dims)
    names = [info["label"][str(i)] for i in range(len(info["label"]))]
    return RealDataset(
        images=x,
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
