"""What every network of the package shares: the ``embed``/``classifier`` contract and layer helpers.

Layers come from MONAI's factories (``Conv``, ``Norm``, ``Pool``, ``Act``) so that one class serves 2D and 3D.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Act, Norm
from torch import nn

__all__ = ["NORM_TYPES", "DistillNet", "make_act", "make_norm", "norm_or_identity", "spatial_tuple"]

# Canonical norm names, plus the spellings of the DC/DSA/MTT configs ("instancenorm", ...) so their configs load.
_NORM_ALIASES = {
    "instance": "instance",
    "instancenorm": "instance",
    "batch": "batch",
    "batchnorm": "batch",
    "layer": "layer",
    "layernorm": "layer",
    "group": "group",
    "groupnorm": "group",
    "none": "none",
}
NORM_TYPES = ("instance", "batch", "layer", "group", "none")


class DistillNet(nn.Module):
    """Base class: ``forward(x) == classifier(embed(x))``.

    Subclasses set ``self.classifier`` (the final ``nn.Linear``) and ``self.feature_dim`` (its input size) and
    implement :meth:`embed`. Distribution matching and herding use ``embed``; everything else uses ``forward``.
    """

    classifier: nn.Linear
    feature_dim: int

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features, shape ``(N, feature_dim)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, shape ``(N, num_classes)``."""
        return self.classifier(self.embed(x))


def spatial_tuple(spatial_size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """Return ``spatial_size`` as a tuple of ``spatial_dims`` positive ints (an int is repeated).

    Raises:
        ValueError: a sequence of the wrong length or a non-positive size.
    """
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
    if isinstance(spatial_size, (int, float)) or (isinstance(spatial_size, torch.Tensor) and spatial_size.ndim == 0):
        size = (int(spatial_size),) * spatial_dims
    else:
        size = tuple(int(s) for s in spatial_size)
        if len(size) != spatial_dims:
            raise ValueError(
                f"spatial_size {tuple(spatial_size)} has {len(size)} axes but spatial_dims is {spatial_dims}; "
                "give the image size without the batch and channel axes."
            )
    if min(size) < 1:
        raise ValueError(f"spatial_size must be positive, got {size}.")
    return size


def make_norm(norm: str | None, spatial_dims: int, channels: int) -> nn.Module | None:
    """Normalisation layer for ``channels`` feature maps, or ``None`` for ``"none"``.

    Args:
        norm: ``"instance"`` (GroupNorm with one group per channel, affine: the references' "instancenorm", which
            unlike ``nn.InstanceNorm`` has learnable scale/shift by default), ``"batch"``, ``"layer"`` (GroupNorm
            with one group: normalises over channels and space, independent of the image size), ``"group"``
            (GroupNorm with 4 groups, fewer where 4 does not divide ``channels``) or ``"none"``.
        spatial_dims: 1, 2 or 3.
        channels: number of channels.

    Raises:
        ValueError: an unknown ``norm``.
    """
    key = "none" if norm is None else _NORM_ALIASES.get(str(norm).lower())
    if key is None:
        raise ValueError(f"unknown norm '{norm}'; valid: {', '.join(NORM_TYPES)}.")
    group = Norm[Norm.GROUP, spatial_dims]
    if key == "instance":
        return group(channels, channels, affine=True)
    if key == "batch":
        return Norm[Norm.BATCH, spatial_dims](channels, affine=True)
    if key == "layer":
        return group(1, channels, affine=True)
    if key == "group":
        return group(math.gcd(4, channels), channels, affine=True)
    return None


def norm_or_identity(norm: str | None, spatial_dims: int, channels: int) -> nn.Module:
    """:func:`make_norm`, with ``nn.Identity`` for ``"none"`` (for modules whose attribute names are fixed)."""
    layer = make_norm(norm, spatial_dims, channels)
    return nn.Identity() if layer is None else layer


def make_act(act: str = "relu") -> nn.Module:
    """Activation layer from MONAI's ``Act`` factory (``"relu"``, ``"leakyrelu"``, ``"sigmoid"``, ``"gelu"``, ...).

    Not in-place: ``torch.func`` transforms (``vmap``, ``grad``) used by the trajectory methods are more robust
    without mutation of intermediate tensors.
    """
    try:
        return Act[str(act).lower()]()
    except (KeyError, AttributeError) as e:
        raise ValueError(f"unknown activation '{act}' (MONAI Act factory names, e.g. relu, leakyrelu, gelu).") from e
