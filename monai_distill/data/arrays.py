"""User image arrays in a MedMNIST-style ``.npz`` (2D or 3D), loaded like a MedMNIST flag.

The file holds ``train_images``, ``train_labels``, ``val_*`` and ``test_*`` (only the splits that are loaded
need to be present, plus ``train`` for the normalisation statistics). Class names and the number of classes come
from the caller or from the labels, since there is no ``medmnist.INFO`` entry for user data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..checks import check_class_labels
from .dataset import DataError, RealDataset, images_to_tensor
from .medmnist import SPLITS, _labels_to_tensor, load_npz_arrays, load_npz_labels, normalise_split

__all__ = ["infer_spatial_dims", "load_arrays"]


def infer_spatial_dims(shape: tuple[int, ...], name: str = "images") -> int:
    """Guess 2D or 3D from the shape of a MedMNIST-style image array.

    (N, H, W) and channel-last (N, H, W, C) with C in 1/3/4 are 2D; (N, D, H, W) is 3D; (N, C, D, H, W) is 3D.
    Channel-first 2D arrays (N, C, H, W) look like 3D volumes, so those need an explicit ``spatial_dims=2``.

    Raises:
        DataError: an array with fewer than 3 or more than 5 dimensions.
    """
    ndim = len(shape)
    if ndim == 3:
        return 2
    if ndim == 4:
        # Same channel-last test as images_to_tensor, so the guess and the conversion agree.
        return 2 if shape[-1] in (1, 3, 4) and shape[1] > 4 else 3
    if ndim == 5:
        return 3
    raise DataError(
        f"{name}: cannot tell 2D from 3D for an array of shape {tuple(shape)}; expected (N, H, W), (N, H, W, C), "
        "(N, D, H, W) or (N, C, D, H, W), or pass spatial_dims."
    )


def _num_classes(path: Path, num_classes: int | None, class_names: list[str] | None) -> int:
    if num_classes is not None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if class_names is not None and len(class_names) != int(num_classes):
            raise ValueError(f"{len(class_names)} class_names given for num_classes={num_classes}; they must agree.")
    k = int(num_classes) if num_classes is not None else (len(class_names) if class_names is not None else None)
    # Every split present, not only the one loaded: the train split defines the classes, and a label of another
    # split outside them (a typo such as 7 in a binary test split) names that split instead of inventing classes.
    return check_class_labels(load_npz_labels(path), str(path), num_classes=k, key="{split} labels ({split}_labels)")


def load_arrays(
    path: str | Path,
    split: str = "train",
    name: str | None = None,
    class_names: list[str] | None = None,
    num_classes: int | None = None,
    spatial_dims: int | None = None,
) -> RealDataset:
    """Load one split of user arrays stored with the MedMNIST keys in an ``.npz``.

    Images may be uint8 (scaled to [0, 1] first, as MedMNIST) or float (used as they are); either way they are
    normalised per channel with the train split's mean/std, which the dataset records.

    Args:
        path: the ``.npz`` file.
        split: ``train``, ``val`` or ``test``.
        name: dataset name recorded in metadata; default: the file stem.
        class_names: one name per class; default ``["0", "1", ...]``.
        num_classes: default: ``len(class_names)``, else the train split's largest label + 1 (every class up to it
            must occur in the train split, and the other splits' labels must lie among these classes).
        spatial_dims: 2 or 3; default: inferred (see :func:`infer_spatial_dims`). Needed for channel-first
            (N, C, H, W) 2D arrays.

    Returns:
        The split as a :class:`RealDataset` (task ``binary-class`` or ``multi-class``).

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: corrupt or wrong-keyed file, unusable shapes or dtypes, labels outside [0, num_classes).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'.")
    if spatial_dims is not None and int(spatial_dims) not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    path = Path(path)
    images, labels = load_npz_arrays(path, split)
    where = f"{path}:{split}_images"
    dims = int(spatial_dims) if spatial_dims is not None else infer_spatial_dims(images.shape, where)
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
        raise DataError(f"{where}: images contain NaN or infinite values.")
    x = images_to_tensor(images, dims, name=where)
    del images
    y = _labels_to_tensor(labels, False, path, split)
    k = _num_classes(path, num_classes, class_names)
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(k)]
    x, mean, std = normalise_split(x, path, split, dims)
    return RealDataset(
        images=x,
        labels=y,
        num_classes=k,
        class_names=names,
        mean=mean,
        std=std,
        name=name or path.stem,
        split=split,
        task="binary-class" if k == 2 else "multi-class",
        source=str(path),
        extra={"spatial_dims": dims},
    )
