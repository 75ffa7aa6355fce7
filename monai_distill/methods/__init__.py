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
