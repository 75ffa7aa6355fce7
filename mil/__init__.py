"""Slide-level multiple-instance learning: CLAM-SB/MB, DSMIL, TransMIL and mean/max/ABMIL baselines.

Heads (:mod:`mil.heads`) share one interface, so one trainer drives them all::

    head = get_mil_head("clam_sb", in_features=1024, num_classes=2)
    out = head(features, mask)           # features (B, N, F), mask (B, N) bool, True = real instance
    total, parts = head.loss(out, labels)

The pipeline around them, one module per step:

    bags: the bag file format (``bags/<slide_id>.pt``) shared by real and synthetic bags, :class:`BagDirectory`.
    real_bags: :func:`make_real_bags`, the real bags of a tiled cohort (patches read with ``wsi``).
    features: :class:`FeatureExtractor`, a frozen encoder turning patches into features, cached per slide.
    train: :class:`MILTrainer`, one trainer for every head (early stopping on validation AUC, AMP on CUDA).
    heatmap: :func:`save_attention_heatmap`, instance scores drawn over the slide.
    workflows: what the ``mil_slide_classification`` bundle runs (train on bags, evaluate on real held-out slides).
"""

from .bags import Bag, BagDirectory, BagError, load_bag, save_bag, write_bag_manifest
from .features import EncoderConfig, FeatureExtractor, FrozenEncoder
from .heads import MIL_HEADS, MILHead, MILOutput, get_mil_head
from .heatmap import save_attention_heatmap
from .real_bags import make_real_bags
from .train import MILTrainer, Predictions, TrainConfig

__all__ = [
    "MIL_HEADS",
    "Bag",
    "BagDirectory",
    "BagError",
    "EncoderConfig",
    "FeatureExtractor",
    "FrozenEncoder",
    "MILHead",
    "MILOutput",
    "MILTrainer",
    "Predictions",
    "TrainConfig",
    "get_mil_head",
    "load_bag",
    "make_real_bags",
    "save_attention_heatmap",
    "save_bag",
    "write_bag_manifest",
]
