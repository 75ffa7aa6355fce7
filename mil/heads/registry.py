"""Name -> head class table, so that configs and the trainer pick a head by string."""

from __future__ import annotations

from typing import Any

from monai_distill.utils import Registry

from .base import MILHead

__all__ = ["MIL_HEADS", "get_mil_head"]

MIL_HEADS: Registry[type[MILHead]] = Registry("MIL head")


def get_mil_head(name: str, in_features: int, num_classes: int, **kwargs: Any) -> MILHead:
    """Build a registered head.

    Args:
        name: one of ``MIL_HEADS.names()`` (clam_sb, clam_mb, dsmil, transmil, abmil, mean, max).
        in_features: per-instance feature size F.
        num_classes: number of bag classes C (>= 2).
        **kwargs: head-specific hyper-parameters (see each class).

    Raises:
        KeyError: unknown name; the message lists the valid ones.
    """
    return MIL_HEADS.get(name)(in_features=in_features, num_classes=num_classes, **kwargs)
