"""The dataset-distillation ConvNet (DC / DSA / DM / MTT), in 2D and 3D."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Pool
from torch import nn

from monai_distill.networks.base import DistillNet, make_act, make_norm, spatial_tuple

__all__ = ["ConvNet", "convnet_padding"]

_POOLING = ("avg", "max", "none")


def convnet_padding(spatial_size: Sequence[int], depth: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Padding that lets ``depth`` 2× poolings divide the input evenly, as the references do for 28 px.

    The references pad MNIST's first conv by 3 instead of 1 so that 28 px behaves like 32 px (28→32→16→8→4).
    Generalised: each axis is padded up to the next multiple of ``2**depth``. The first conv takes the symmetric
    part; an odd remainder cannot be split evenly, so one extra zero row goes on the high side of that axis.

    Args:
        spatial_size: image size per axis.
        depth: number of conv blocks (each halves the size).

    Returns:
        ``(first_conv_padding, extra_high_padding)``, one entry per axis.
    """
    step = 2**depth
    diffs = [math.ceil(s / step) * step - s for s in spatial_size]
    return tuple(1 + d // 2 for d in diffs), tuple(d % 2 for d in diffs)


class ConvNet(DistillNet):
    """``depth`` × [conv3 → norm → act → pool2] → flatten → ``nn.Linear``, as in DC/DSA/DM/MTT.

    With ``width=128, depth=3, norm="instance"`` and 28- or 32-px 2D input this is the references' ``ConvNet``,
    module for module (``features.0`` is the first conv, ``classifier`` the head).

    Args:
        spatial_dims: 2 or 3 (1 also works).
        in_channels: input channels.
        num_classes: output classes.
        spatial_size: input size (int or one per axis); the feature size is computed from it analytically.
        width: channels of every conv.
        depth: number of conv blocks.
        norm: ``"instance"`` (GroupNorm(C, C), the default of the references), ``"batch"``, ``"layer"``,
            ``"group"`` or ``"none"``; see :func:`~monai_distill.networks.base.make_norm`.
        act: activation name from MONAI's ``Act`` factory.
        pooling: ``"avg"`` (default), ``"max"`` or ``"none"``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        spatial_size: int | Sequence[int],
        width: int = 128,
        depth: int = 3,
        norm: str | None = "instance",
        act: str = "relu",
        pooling: str = "avg",
    ) -> None:
        super().__init__()
        size = spatial_tuple(spatial_size, spatial_dims)
        if depth < 1 or width < 1:
            raise ValueError(f"convnet needs depth >= 1 and width >= 1, got depth={depth}, width={width}.")
        pooling = str(pooling).lower()
        if pooling not in _POOLING:
            raise ValueError(f"unknown pooling '{pooling}'; valid: {', '.join(_POOLING)}.")

        if pooling == "none":
            first_pad, extra = (1,) * spatial_dims, (0,) * spatial_dims
            feat_size = size
        else:
            first_pad, extra = convnet_padding(size, depth)
            feat_size = tuple(math.ceil(s / 2**depth) for s in size)
        # F.pad takes (low, high) pairs starting from the last axis.
        self._input_pad = tuple(p for e in reversed(extra) for p in (0, e)) if any(extra) else None

        conv = Conv[Conv.CONV, spatial_dims]
        pool = {"avg": Pool[Pool.AVG, spatial_dims], "max": Pool[Pool.MAX, spatial_dims]}.get(pooling)
        layers: list[nn.Module] = []
        channels = in_channels
        for d in range(depth):
            layers.append(conv(channels, width, kernel_size=3, padding=first_pad if d == 0 else 1))
            norm_layer = make_norm(norm, spatial_dims, width)
            if norm_layer is not None:
                layers.append(norm_layer)
            layers.append(make_act(act))
            if pool is not None:
                layers.append(pool(kernel_size=2, stride=2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * math.prod(feat_size)
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self._input_pad is not None:
            x = F.pad(x, self._input_pad)
        return self.features(x).flatten(1)
