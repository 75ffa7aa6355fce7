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

    def check_ipc(self, ipc: int, allow_absent: bool = False) -> None:
        """Raise a clear error when a class holds fewer than ``ipc`` images.

        Args:
            ipc: images per class.
            allow_absent: classes without any image are allowed (and skipped): one slide's patches carry only the
                slide's class, while the classifier still has every class of the cohort.
        """
        if ipc < 1:
            raise ValueError(f"ipc must be >= 1, got {ipc}.")
        present = [i for i in self.indices if len(i) > 0 or not allow_absent]
        if not present:
            raise ValueError(f"{self.data.name} holds no image of any class.")
        for c, idx in enumerate(self.indices):
            if allow_absent and len(idx) == 0:
                continue
            if len(idx) < ipc:
                smallest = min(len(i) for i in present)
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
