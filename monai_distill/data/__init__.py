"""Real datasets, class-balanced sampling and the SyntheticSet."""

from .dataset import DataError, RealDataset, images_to_tensor, normalise, split_stats
from .medmnist import MEDMNIST_SIZES, SPLITS, load_medmnist, load_npz_arrays, medmnist_info, medmnist_path
from .sampling import ClassBalancedSampler
from .synthetic import SyntheticSet

__all__ = [
    "MEDMNIST_SIZES",
    "SPLITS",
    "ClassBalancedSampler",
    "DataError",
    "RealDataset",
    "SyntheticSet",
    "images_to_tensor",
    "load_medmnist",
    "load_npz_arrays",
    "medmnist_info",
    "medmnist_path",
    "normalise",
    "split_stats",
]
