"""Differentiable augmentation used inside distillation losses.

:class:`DiffAugment` is differentiable siamese augmentation (DSA; Zhao & Bilen, "Dataset Condensation with
Differentiable Siamese Augmentation", ICML 2021) for 2D and 3D batches.
"""

from .dsa import OP_GROUPS, AugSample, DiffAugment, DSAParams

__all__ = ["OP_GROUPS", "AugSample", "DSAParams", "DiffAugment"]
