"""Slide-level multiple-instance learning: CLAM-SB/MB, DSMIL, TransMIL and mean/max/ABMIL baselines.

Heads (:mod:`mil.heads`) share one interface, so one trainer drives them all::

    head = get_mil_head("clam_sb", in_features=1024, num_classes=2)
    out = head(features, mask)           # features (B, N, F), mask (B, N) bool, True = real instance
    total, parts = head.loss(out, labels)
"""

from .heads import MIL_HEADS, MILHead, MILOutput, get_mil_head

__all__ = ["MIL_HEADS", "MILHead", "MILOutput", "get_mil_head"]
