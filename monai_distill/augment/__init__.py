"""Differentiable augmentation used inside distillation losses.

:class:`DiffAugment` is differentiable siamese augmentation (DSA; Zhao & Bilen, "Dataset Condensation with
Differentiable Siamese Augmentation", ICML 2021) for 2D and 3D batches. :class:`MacenkoNormalizer` is differentiable
Macenko stain normalisation of H&E batches towards a :class:`StainTemplate` fitted offline (Histo-DD, seed 003).
"""

from .dsa import OP_GROUPS, AugSample, DiffAugment, DSAParams
from .stain import MacenkoNormalizer, StainTemplate, select_template_index

__all__ = [
    "OP_GROUPS",
    "AugSample",
    "DSAParams",
    "DiffAugment",
    "MacenkoNormalizer",
    "StainTemplate",
    "select_template_index",
]
