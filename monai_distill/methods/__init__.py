"""One registry of distillation methods and coresets: ``get_method(name)(real, cfg, device)``."""

from .base import METHODS, DistillConfig, Distiller, get_method, method_names
from .coresets import Coreset, ForgettingCoreset, HerdingCoreset, RandomCoreset

__all__ = [
    "METHODS",
    "Coreset",
    "DistillConfig",
    "Distiller",
    "ForgettingCoreset",
    "HerdingCoreset",
    "RandomCoreset",
    "get_method",
    "method_names",
]

# Gradient and distribution matching (issue 5): DC, DSA, DM; importing the modules registers them.
from .distribution_matching import DM  # noqa: E402
from .gradient_matching import DC, DSA, GradientMatching  # noqa: E402
from .image_distiller import ImageDistiller  # noqa: E402
from .matching import GRADIENT_DISTANCES, class_gradient_match, gradient_distance  # noqa: E402

__all__ += [
    "DC",
    "DM",
    "DSA",
    "GRADIENT_DISTANCES",
    "GradientMatching",
    "ImageDistiller",
    "class_gradient_match",
    "gradient_distance",
]
