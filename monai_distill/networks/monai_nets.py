"""MONAI's ResNet-18, DenseNet-121 and ViT with their final linear layer split off as ``classifier``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.layers.factories import Conv
from monai.networks.nets import DenseNet121 as _MonaiDenseNet121
from monai.networks.nets import ViT, resnet18
from monai.utils import optional_import
from torch import nn

from monai_distill.networks.base import DistillNet, spatial_tuple

__all__ = ["MonaiClassifier", "build_densenet121", "build_resnet18", "build_vit", "vit_patch_size"]


class MonaiClassifier(DistillNet):
    """A MONAI classifier whose last ``nn.Linear`` was taken out: ``embed = backbone``, ``forward =
    classifier(backbone(x))``.

    Args:
        backbone: the MONAI network without its final linear layer; tuple outputs (ViT's ``(x, hidden_states)``)
            are reduced to their first element.
        classifier: the removed final linear layer (keeps MONAI's initialisation).
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.feature_dim = classifier.in_features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out


def build_resnet18(
    spatial_dims: int, in_channels: int, num_classes: int, spatial_size: int | Sequence[int], **kwargs: Any
) -> MonaiClassifier:
    """MONAI ``resnet18`` (batch norm, 7×7 stride-1 stem + max pool); ``kwargs`` go to MONAI's ``ResNet``."""
    spatial_tuple(spatial_size, spatial_dims)
    net = resnet18(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes, **kwargs)
    head = net.fc
    # MONAI's ResNet.forward skips `fc` when it is None, so the backbone ends at the pooled features.
    net.fc = None
    return MonaiClassifier(net, head)


def build_densenet121(
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    spatial_size: int | Sequence[int],
    stem_stride: int | None = None,
    **kwargs: Any,
) -> MonaiClassifier:
    """MONAI ``DenseNet121`` (batch norm); ``kwargs`` go to it.

    The ImageNet stem (stride-2 conv + max pool) followed by three transitions divides the size by 32, which
    leaves nothing of a 28-px image; below 64 px the stem conv therefore has stride 1 (28 → 14 → 7 → 3 → 1).

    Args:
        stem_stride: stride of the 7×7 stem conv; ``None``: 1 below 64 px (smallest axis), else 2 (MONAI's).
    """
    size = spatial_tuple(spatial_size, spatial_dims)
    if stem_stride is None:
        stem_stride = 1 if min(size) < 64 else 2
    net = _MonaiDenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, **kwargs)
    if stem_stride != 2:
        old = net.features.conv0
        new = Conv[Conv.CONV, spatial_dims](
            old.in_channels, old.out_channels, kernel_size=7, stride=stem_stride, padding=3, bias=False
        )
        nn.init.kaiming_normal_(new.weight)  # as MONAI initialises its convs
        net.features.conv0 = new
    final = [(s + 6 - 7) // stem_stride + 1 for s in size]
    final = [(s - 1) // 2 + 1 for s in final]  # pool0: kernel 3, stride 2, padding 1
    final = [s // 8 for s in final]  # three transitions, 2× average pool each
    if min(final) < 1:
        raise ValueError(f"densenet121: spatial_size {size} is too small (stem stride {stem_stride}).")
    head = net.class_layers.out
    net.class_layers.out = nn.Identity()
    return MonaiClassifier(net, head)


def vit_patch_size(spatial_size: Sequence[int], max_tokens_per_axis: int = 8) -> tuple[int, ...]:
    """Per axis, the smallest divisor ``p`` of the size with ``size / p <= max_tokens_per_axis`` (28 → 4, 64 → 8)."""
    return tuple(next(p for p in range(1, s + 1) if s % p == 0 and s // p <= max_tokens_per_axis) for s in spatial_size)


def build_vit(
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    spatial_size: int | Sequence[int],
    width: int = 128,
    depth: int = 3,
    **kwargs: Any,
) -> MonaiClassifier:
    """MONAI ``ViT`` sized from ``width``/``depth``; ``embed`` is the final-normed class token.

    Defaults: ``hidden_size = 2 * width``, ``num_heads = 4``, ``mlp_dim = 4 * hidden_size``, ``num_layers =
    2 * depth``, ``patch_size`` from :func:`vit_patch_size`; each can be overridden through ``kwargs``, and the
    rest of ``kwargs`` go to MONAI's ``ViT``. The classification head is a plain linear layer (MONAI's default
    Tanh on logits would cap them at ±1).
    """
    if not optional_import("einops")[1]:
        raise ImportError("network 'vit' needs the einops package (MONAI's ViT imports it): pip install einops.")
    size = spatial_tuple(spatial_size, spatial_dims)
    hidden = int(kwargs.pop("hidden_size", 2 * width))
    heads = int(kwargs.pop("num_heads", 4))
    if hidden % heads:
        raise ValueError(f"vit: hidden_size {hidden} (2 × width by default) must be divisible by num_heads {heads}.")
    net = ViT(
        in_channels=in_channels,
        img_size=size,
        patch_size=kwargs.pop("patch_size", vit_patch_size(size)),
        hidden_size=hidden,
        mlp_dim=int(kwargs.pop("mlp_dim", 4 * hidden)),
        num_layers=int(kwargs.pop("num_layers", 2 * depth)),
        num_heads=heads,
        classification=True,
        num_classes=num_classes,
        spatial_dims=spatial_dims,
        post_activation=None,
        **kwargs,
    )
    for block in net.blocks:
        if not block.with_cross_attention:
            # MONAI always creates this LayerNorm but only uses it with cross-attention; a parameter that never
            # gets a gradient would sit in every flattened trajectory and upset DDP's unused-parameter check.
            block.norm_cross_attn = nn.Identity()
    head = net.classification_head
    net.classification_head = nn.Identity()
    return MonaiClassifier(net, head)
