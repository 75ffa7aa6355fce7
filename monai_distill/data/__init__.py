"""Real datasets, class-balanced sampling and the SyntheticSet."""

from .arrays import infer_spatial_dims, load_arrays
from .dataset import (
    DataError,
    RealDataset,
    concat_splits,
    images_to_tensor,
    normalise,
    split_stats,
    stratified_holdout,
)
from .loaders import load_dataset
from .medmnist import (
    MEDMNIST_SIZES,
    SPLITS,
    load_medmnist,
    load_npz_arrays,
    load_npz_labels,
    medmnist_info,
    medmnist_path,
    normalise_split,
    train_stats,
)
from .sampling import ClassBalancedSampler
from .synthetic import SyntheticSet
from .volumes import VolumeRow, clear_volume_cache, load_volume_csv, read_volume_csv, volume_transform

__all__ = [
    "MEDMNIST_SIZES",
    "SPLITS",
    "ClassBalancedSampler",
    "DataError",
    "RealDataset",
    "SyntheticSet",
    "VolumeRow",
    "clear_volume_cache",
    "concat_splits",
    "images_to_tensor",
    "infer_spatial_dims",
    "load_arrays",
    "load_dataset",
    "load_medmnist",
    "load_npz_arrays",
    "load_npz_labels",
    "load_volume_csv",
    "medmnist_info",
    "medmnist_path",
    "normalise",
    "normalise_split",
    "read_volume_csv",
    "split_stats",
    "stratified_holdout",
    "train_stats",
    "volume_transform",
]
