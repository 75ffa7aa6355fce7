"""Name -> head class table, so that configs and the trainer pick a head by string."""

from __future__ import annotations

from typing import Any

from monai_distill.utils import Registry

from .base import MILHead

__all__ = ["HEAD_ARGUMENTS", "MIL_HEADS", "RegistryHead", "get_mil_head"]

MIL_HEADS: Registry[type[MILHead]] = Registry("MIL head")

# Parameter names a head definition (``head_def``) may take for what the data decides; unset ones are filled in.
HEAD_ARGUMENTS: dict[str, str] = {"in_features": "in_features", "num_classes": "num_classes",
                                  "n_classes": "num_classes"}


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


class RegistryHead:
    """The default of the MIL bundle's ``head_def``: the registered head ``name`` (the flat flag ``--model``), built
    with ``--head_options``. The workflows read it as "the registry head ``name``"; called directly it is a factory
    like any other.

    Args:
        name: a registered head name.
    """

    def __init__(self, name: str) -> None:
        self.name = str(name).lower()

    def __call__(self, in_features: int, num_classes: int, **kwargs: Any) -> MILHead:
        return get_mil_head(self.name, in_features, num_classes, **kwargs)

    def __repr__(self) -> str:
        return f"RegistryHead({self.name!r})"
