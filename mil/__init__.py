"""Slide-level multiple-instance learning: CLAM-SB/MB, DSMIL, TransMIL and mean/max/ABMIL baselines.

Heads (:mod:`mil.heads`) share one interface, so one trainer drives them all::

    head = get_mil_head("clam_sb", in_features=1024, num_classes=2)
    out = head(features, mask)           # features (B, N, F), mask (B, N) bool, True = real instance
    total, parts = head.loss(out, labels)

The pipeline around them, one module per step:

    bags: the bag file format (``bags/<slide_id>.pt``) shared by real and synthetic bags, :class:`BagDirectory`.
    real_bags: :func:`make_real_bags`, the real bags of a tiled cohort (patches read with ``wsi``).
    synthetic_bags: :class:`SyntheticBagsWorkflow`, per-slide Histo-DD synthetic bags (the ``wsi_synthetic_bags``
        bundle).
    features: :class:`FeatureExtractor`, a frozen encoder turning patches into features, cached per slide.
    train: :class:`MILTrainer`, one trainer for every head (early stopping on validation AUC, AMP on CUDA).
    heatmap: :func:`save_attention_heatmap`, instance scores drawn over the slide.
    workflows: what the ``mil_slide_classification`` bundle runs (train on bags, evaluate on real held-out slides).
"""

from importlib import import_module
from typing import Any

from .heads import MIL_HEADS, MILHead, MILOutput, get_mil_head

# The pipeline is imported on first use: ``import mil.bags`` (what a distiller writing synthetic bags needs) then
# stays light and cannot form an import cycle with the distillation engine that the trainer uses for metrics.
_LAZY = {
    "Bag": "bags", "BagDirectory": "bags", "BagError": "bags", "load_bag": "bags", "save_bag": "bags",
    "compact_bags": "bags", "write_bag_manifest": "bags", "EncoderConfig": "features", "FeatureExtractor": "features",
    "FrozenEncoder": "features", "save_attention_heatmap": "heatmap", "make_real_bags": "real_bags",
    "SyntheticBagsWorkflow": "synthetic_bags", "MILTrainer": "train", "Predictions": "train", "TrainConfig": "train",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mil' has no attribute '{name}'")


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
    "SyntheticBagsWorkflow",
    "TrainConfig",
    "compact_bags",
    "get_mil_head",
    "load_bag",
    "make_real_bags",
    "save_attention_heatmap",
    "save_bag",
    "write_bag_manifest",
]
