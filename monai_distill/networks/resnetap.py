"""ResNetAP-10: ResNet-10 that downsamples by average pooling (IDC, Histo-DD), in 2D and 3D."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Pool
from torch import nn

from monai_distill.networks.base import DistillNet, make_act, norm_or_identity, spatial_tuple

__all__ = ["BasicBlockAP", "ResNetAP"]


class BasicBlockAP(nn.Module):
    """Basic residual block whose stride-2 step is a 2× average pool after the first conv.

    Strided convolutions see only every other pixel; averaging keeps all of them, which gives smoother gradients
    with respect to the input images (the reason IDC and Histo-DD use it for distillation).

    Args:
        spatial_dims: 2 or 3.
        in_planes: input channels.
        planes: output channels.
        stride: 1 or 2 (2 halves the size).
        norm: norm name, see :func:`~monai_distill.networks.base.make_norm`.
        act: activation name.
    """

    def __init__(
        self, spatial_dims: int, in_planes: int, planes: int, stride: int = 1, norm: str = "instance", act: str = "relu"
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        avg = Pool[Pool.AVG, spatial_dims]
        self.conv1 = conv(in_planes, planes, kernel_size=3, padding=1, bias=False)
        self.norm1 = norm_or_identity(norm, spatial_dims, planes)
        self.act1 = make_act(act)
        self.pool = avg(kernel_size=2, stride=2) if stride != 1 else nn.Identity()
        self.conv2 = conv(planes, planes, kernel_size=3, padding=1, bias=False)
        self.norm2 = norm_or_identity(norm, spatial_dims, planes)
        shortcut: list[nn.Module] = []
        if stride != 1 or in_planes != planes:
            shortcut.append(conv(in_planes, planes, kernel_size=1, bias=False))
            if stride != 1:
                shortcut.append(avg(kernel_size=2, stride=2))
            shortcut.append(norm_or_identity(norm, spatial_dims, planes))
        self.shortcut = nn.Sequential(*shortcut)
        self.act2 = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.act1(self.norm1(self.conv1(x))))
        out = self.norm2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNetAP(DistillNet):
    """ResNetAP: conv3 stem → 4 stages (widths w, 2w, 4w, 8w; stages 2-4 halve by average pooling) → global
    average pool → ``nn.Linear``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output classes.
        spatial_size: input size (int or one per axis).
        width: channels of the first stage.
        blocks: residual blocks per stage (1 each gives ResNetAP-10).
        norm: ``"instance"`` (GroupNorm(C, C), default), ``"batch"``, ``"layer"``, ``"group"`` or ``"none"``.
        act: activation name.
        stem_pools: 2× average pools after the stem. ``None``: as many as bring the smallest axis to 32 or less
            (0 for 28/32 px, 1 for 64 px, 3 for 224 px), so large patches do not run four stages at full size.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        spatial_size: int | Sequence[int],
        width: int = 64,
        blocks: Sequence[int] = (1, 1, 1, 1),
        norm: str = "instance",
        act: str = "relu",
        stem_pools: int | None = None,
    ) -> None:
        super().__init__()
        size = spatial_tuple(spatial_size, spatial_dims)
        if len(blocks) != 4 or min(blocks) < 1 or width < 1:
            raise ValueError(f"resnetap needs 4 stages of >= 1 block and width >= 1, got {tuple(blocks)}, {width}.")
        if stem_pools is None:
            stem_pools, smallest = 0, min(size)
            while smallest > 32:
                smallest //= 2
                stem_pools += 1
        conv = Conv[Conv.CONV, spatial_dims]
        self.conv1 = conv(in_channels, width, kernel_size=3, padding=1, bias=False)
        self.norm1 = norm_or_identity(norm, spatial_dims, width)
        self.act1 = make_act(act)
        avg = Pool[Pool.AVG, spatial_dims]
        self.stem_pool = nn.Sequential(*[avg(kernel_size=2, stride=2) for _ in range(stem_pools)])

        in_planes = width
        stages = []
        for i, n_blocks in enumerate(blocks):
            planes = width * 2**i
            stage = []
            for b in range(n_blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                stage.append(BasicBlockAP(spatial_dims, in_planes, planes, stride=stride, norm=norm, act=act))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.global_pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.feature_dim = in_planes
        self.classifier = nn.Linear(in_planes, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem_pool(self.act1(self.norm1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.global_pool(out).flatten(1)
