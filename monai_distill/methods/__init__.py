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

# Trajectory matching (issue 6): registering the classes is what importing these modules does.
from .buffers import BufferSettings, ExpertBuffer, balanced_weights, flat_parameters, train_expert
from .datm import DATM
from .ftd import FTD
from .hoptm import HoPTM
from .mtt import MTT
from .ptm import PTM
from .trajectory import DivergenceError, FunctionalNet, TrajectoryDistiller, TrajectoryOptions

__all__ += [
    "DATM",
    "FTD",
    "MTT",
    "PTM",
    "BufferSettings",
    "DivergenceError",
    "ExpertBuffer",
    "FunctionalNet",
    "HoPTM",
    "TrajectoryDistiller",
    "TrajectoryOptions",
    "balanced_weights",
    "flat_parameters",
    "train_expert",
]

# Gradient and distribution matching (issue 5): DC, DSA, DM, Histo-DD; importing the modules registers them.
from .distribution_matching import DM  # noqa: E402
from .gradient_matching import DC, DSA, GradientMatching  # noqa: E402
from .histodd import HistoDD  # noqa: E402
from .image_distiller import ImageDistiller  # noqa: E402
from .matching import GRADIENT_DISTANCES, class_gradient_match, gradient_distance  # noqa: E402
from .model_pool import ModelPool, filter_normalized_direction, perturb_  # noqa: E402

__all__ += [
    "DC",
    "DM",
    "DSA",
    "GRADIENT_DISTANCES",
    "GradientMatching",
    "HistoDD",
    "ImageDistiller",
    "ModelPool",
    "class_gradient_match",
    "filter_normalized_direction",
    "gradient_distance",
    "perturb_",
]
