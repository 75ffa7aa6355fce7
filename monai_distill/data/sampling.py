"""Class-balanced sampling of real images."""

from __future__ import annotations

import torch

from .dataset import DataError, RealDataset

__all__ = ["ClassBalancedSampler"]


class ClassBalancedSampler:
    """Draws real images per class with an explicit generator (reproducible, independent of global RNG).

    Args:
        data: the real split to sample from (single-label).
    """

    def __init__(self, data: RealDataset) -> None:
        if data.is_multilabel:
            raise DataError(f"{data.name}: class-balanced sampling needs single-label data, task is '{data.task}'.")
        self.data = data
        self.indices = [data.indices_of_class(c) for c in range(data.num_classes)]

    def check_ipc(self, ipc: int) -> None:
        """Raise a clear error when a class holds fewer than ``ipc`` images."""
        if ipc < 1:
            raise ValueError(f"ipc must be >= 1, got {ipc}.")
        for c, idx in enumerate(self.indices):
            if len(idx) < ipc:
                smallest = min(len(i) for i in self.indices)
                raise ValueError(
                    f"ipc={ipc} exceeds the {len(idx)} training images of class {c} "
                    f"('{self.data.class_names[c]}') in {self.data.name}; the largest valid ipc is {smallest}."
                )

    def sample_indices(self, c: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` distinct dataset indices of class ``c`` (all of them, shuffled, when the class is smaller)."""
        idx = self.indices[c]
        perm = torch.randperm(len(idx), generator=generator)[: min(n, len(idx))]
        return idx[perm]

    def sample(self, c: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` real images of class ``c``."""
        return self.data.images[self.sample_indices(c, n, generator)]

    def balanced_indices(self, n_per_class: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n_per_class`` indices of every class, class after class."""
        return torch.cat([self.sample_indices(c, n_per_class, generator) for c in range(self.data.num_classes)])
