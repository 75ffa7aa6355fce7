"""In-memory labelled image sets (2D or 3D) and the errors that loaders raise."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["DataError", "RealDataset", "images_to_tensor", "normalise", "split_stats"]


class DataError(ValueError):
    """A dataset file or array that cannot be used; the message names the file/key and what was expected."""


@dataclass
class RealDataset:
    """A labelled split held in memory as normalised float tensors.

    Attributes:
        images: float tensor (N, C, H, W) or (N, C, D, H, W), normalised with ``mean``/``std``.
        labels: long tensor (N,) of class indices (multi-label sets keep (N, K) and ``task`` says so).
        num_classes: number of classes.
        class_names: one name per class.
        mean: per-channel mean used to normalise (of the train split), to show images in real units.
        std: per-channel std used to normalise.
        name: dataset name (the MedMNIST flag, or the file stem of user data).
        split: ``train``, ``val`` or ``test``.
        task: MedMNIST task string, e.g. ``binary-class``, ``multi-class``, ``multi-label, binary-class``.
        source: where the data was read from.
        extra: further facts (size, info from medmnist) recorded in metrics and SyntheticSet metadata.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    class_names: list[str]
    mean: list[float]
    std: list[float]
    name: str = "data"
    split: str = "train"
    task: str = "multi-class"
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim not in (4, 5):
            raise DataError(
                f"{self.name}/{self.split}: images must be (N, C, H, W) or (N, C, D, H, W), got {tuple(self.images.shape)}."
            )
        if self.images.shape[0] != self.labels.shape[0]:
            raise DataError(
                f"{self.name}/{self.split}: {self.images.shape[0]} images but {self.labels.shape[0]} labels."
            )
        if self.is_multilabel:
            return
        if self.labels.numel() and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
            bad = self.labels[(self.labels < 0) | (self.labels >= self.num_classes)]
            raise DataError(
                f"{self.source or self.name}: {self.split} labels must lie in [0, {self.num_classes - 1}] "
                f"({self.num_classes} classes), found {sorted(set(bad.tolist()))[:10]}."
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def is_multilabel(self) -> bool:
        return "multi-label" in self.task or self.labels.ndim == 2

    @property
    def spatial_dims(self) -> int:
        return self.images.ndim - 2

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def spatial_size(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.images.shape[2:])

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def indices_of_class(self, c: int) -> torch.Tensor:
        return torch.nonzero(self.labels == c, as_tuple=False).flatten()

    def describe(self) -> dict:
        """Facts recorded in metrics and metadata."""
        return {
            "dataset": self.name,
            "split": self.split,
            "task": self.task,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "in_channels": self.in_channels,
            "spatial_size": list(self.spatial_size),
            "n_images": len(self),
            "mean": self.mean,
            "std": self.std,
            **self.extra,
        }


def images_to_tensor(images: np.ndarray, spatial_dims: int, name: str = "images") -> torch.Tensor:
    """Bring MedMNIST-style uint8 arrays to float (N, C, *spatial) in [0, 1].

    MedMNIST stores 2D grey images as (N, H, W), colour as (N, H, W, 3) and 3D volumes as (N, D, H, W).
    """
    arr = np.asarray(images)
    if arr.ndim == spatial_dims + 1:
        arr = arr[:, None]
    elif arr.ndim == spatial_dims + 2 and spatial_dims == 2 and arr.shape[-1] in (1, 3, 4) and arr.shape[1] > 4:
        arr = np.moveaxis(arr, -1, 1)
    elif arr.ndim != spatial_dims + 2:
        raise DataError(f"{name}: expected {spatial_dims}D images, got an array of shape {arr.shape}.")
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    return t.float()


def split_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a (N, C, ...) float tensor."""
    dims = [0, *range(2, images.ndim)]
    mean = images.mean(dim=dims)
    std = images.std(dim=dims).clamp_min(1e-6)
    return [float(m) for m in mean], [float(s) for s in std]


def normalise(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    shape = (1, -1) + (1,) * (images.ndim - 2)
    return (images - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)
