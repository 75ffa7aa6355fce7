"""In-memory labelled image sets (2D or 3D) and the errors that loaders raise."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..checks import DataError, check_finite

__all__ = ["DataError", "RealDataset", "concat_splits", "images_to_tensor", "normalise", "split_stats",
           "stratified_holdout"]


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
                f"{self.name}/{self.split}: images must be (N, C, H, W) or (N, C, D, H, W), "
                f"got {tuple(self.images.shape)}."
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

    def take(self, index: torch.Tensor, split: str | None = None) -> RealDataset:
        """The images at ``index`` (same classes and normalisation), optionally renamed to ``split``."""
        return replace(self, images=self.images[index], labels=self.labels[index], split=split or self.split,
                       extra=dict(self.extra))

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


def stratified_holdout(data: RealDataset, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``data`` into (kept, held-out) indices holding out ``round(fraction * n_c)`` images of every class c.

    Each class keeps at least one image and, when ``fraction > 0``, gives at least one; the draw depends only on
    ``seed`` and the labels, so every caller with the same seed holds out the same images.

    Raises:
        DataError: multi-label data (no single class to stratify by) or ``fraction`` outside [0, 1).
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"{data.name}/{data.split}: a held-out fraction must lie in [0, 1), got {fraction}.")
    if data.is_multilabel:
        raise DataError(f"{data.name}: a stratified hold-out needs single-label data, task is '{data.task}'.")
    generator = torch.Generator().manual_seed(int(seed))
    kept, held = [], []
    for c in range(data.num_classes):
        idx = data.indices_of_class(c)
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n = 0 if fraction == 0 or len(idx) < 2 else min(len(idx) - 1, max(1, round(fraction * len(idx))))
        held.append(idx[:n])
        kept.append(idx[n:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


def concat_splits(first: RealDataset, second: RealDataset, split: str) -> RealDataset:
    """``first`` followed by ``second`` as one split named ``split``; both must share classes and normalisation.

    Raises:
        DataError: the two differ in image shape, classes or normalisation.
    """
    same = (first.images.shape[1:] == second.images.shape[1:] and first.num_classes == second.num_classes
            and first.mean == second.mean and first.std == second.std)
    if not same:
        raise DataError(f"{first.name}: cannot join its {first.split} and {second.split} splits: image shapes "
                        f"{tuple(first.images.shape[1:])}/{tuple(second.images.shape[1:])}, classes "
                        f"{first.num_classes}/{second.num_classes}, or normalisation differ.")
    return replace(first, images=torch.cat([first.images, second.images]),
                   labels=torch.cat([first.labels, second.labels]), split=split, extra=dict(first.extra))


def images_to_tensor(images: np.ndarray, spatial_dims: int, name: str = "images") -> torch.Tensor:
    """Bring MedMNIST-style uint8 arrays to float (N, C, *spatial) in [0, 1].

    MedMNIST stores 2D grey images as (N, H, W), colour as (N, H, W, 3) and 3D volumes as (N, D, H, W).
    """
    arr = np.asarray(images)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise DataError(f"{name}: images must be numeric, got dtype {arr.dtype}.")
    if arr.ndim == spatial_dims + 1:
        arr = arr[:, None]
    elif arr.ndim == spatial_dims + 2 and spatial_dims == 2 and arr.shape[-1] in (1, 3, 4) and arr.shape[1] > 4:
        arr = np.moveaxis(arr, -1, 1)
    elif arr.ndim != spatial_dims + 2:
        raise DataError(f"{name}: expected {spatial_dims}D images, got an array of shape {arr.shape}.")
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if t.is_floating_point():
        check_finite(t, name)
    return t.float()


def split_stats(
    images: torch.Tensor | np.ndarray, spatial_dims: int | None = None, chunk_elements: int = 2**24
) -> tuple[list[float], list[float]]:
    """Per-channel mean and (unbiased) std of a split.

    Statistics are taken over chunks of samples and merged in float64 with Chan et al.'s parallel-variance update,
    so a large 3D split (e.g. 1188 volumes of 64^3) never needs a second full-size float copy and the result does
    not depend on float32 rounding of one huge reduction.

    Args:
        images: float tensor (N, C, ...), or the raw array of a split (any layout :func:`images_to_tensor` reads),
            which is converted chunk by chunk.
        spatial_dims: needed only for raw arrays, to read their layout.
        chunk_elements: about how many values one chunk holds.

    Returns:
        ``(mean, std)``, one float per channel; std is at least 1e-6 so that constant images can be normalised.
    """
    if not isinstance(images, torch.Tensor) and spatial_dims is None:
        raise ValueError("split_stats: spatial_dims is required to read a raw array.")
    n_total = int(images.shape[0])
    per_sample = max(1, int(np.prod(images.shape[1:])))
    step = max(1, chunk_elements // per_sample)
    count, mean, m2 = 0, None, None
    for i in range(0, n_total, step):
        part = images[i : i + step]
        t = part if isinstance(part, torch.Tensor) else images_to_tensor(part, int(spatial_dims))
        t = t.detach().float().transpose(0, 1).reshape(t.shape[1], -1)
        n_b = t.shape[1]
        # A chunk is small enough for float32 Welford (var_mean) to be accurate; the merge runs in float64.
        var_b, mean_b = torch.var_mean(t, dim=1, correction=0)
        mean_b, m2_b = mean_b.double(), var_b.double() * n_b
        if mean is None:
            count, mean, m2 = n_b, mean_b, m2_b
            continue
        delta = mean_b - mean
        total = count + n_b
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta**2 * (count * n_b / total)
        count = total
    if mean is None:
        raise DataError("split_stats: the split holds no images, so its mean/std are undefined.")
    std = (m2 / max(count - 1, 1)).sqrt().clamp_min(1e-6)
    return [float(m) for m in mean], [float(s) for s in std]


def normalise(images: torch.Tensor, mean: list[float], std: list[float], inplace: bool = False) -> torch.Tensor:
    """``(images - mean) / std`` per channel; ``inplace=True`` reuses the memory of a tensor the caller owns."""
    shape = (1, -1) + (1,) * (images.ndim - 2)
    dtype = images.dtype if images.is_floating_point() else torch.float32
    m = torch.tensor(mean, dtype=dtype).view(shape)
    s = torch.tensor(std, dtype=dtype).view(shape)
    if inplace:
        return images.sub_(m).div_(s)
    return (images - m) / s
