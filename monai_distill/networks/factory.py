"""The network registry and :func:`get_network`, the one way the package builds a network from a config."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from monai_distill.networks.base import DistillNet, spatial_tuple
from monai_distill.networks.classic import AlexNet, LeNet
from monai_distill.networks.convnet import ConvNet
from monai_distill.networks.monai_nets import build_densenet121, build_resnet18, build_vit
from monai_distill.networks.resnetap import ResNetAP
from monai_distill.utils import Registry

__all__ = ["NETWORKS", "NetworkBuilder", "get_network", "network_names"]

# Called as builder(spatial_dims, in_channels, num_classes, spatial_size, width, depth, norm, **kwargs).
NetworkBuilder = Callable[..., DistillNet]

NETWORKS: Registry[NetworkBuilder] = Registry("network")


@NETWORKS.register("convnet")
def _convnet(
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    spatial_size: Sequence[int],
    width: int = 128,
    depth: int = 3,
    norm: str = "instance",
    **kwargs: Any,
) -> DistillNet:
    """:class:`~monai_distill.networks.convnet.ConvNet`; ``kwargs``: ``act``, ``pooling``."""
    return ConvNet(spatial_dims, in_channels, num_classes, spatial_size, width=width, depth=depth, norm=norm, **kwargs)


@NETWORKS.register("resnetap10")
def _resnetap10(
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    spatial_size: Sequence[int],
    width: int = 128,
    depth: int = 3,
    norm: str = "instance",
    **kwargs: Any,
) -> DistillNet:
    """:class:`~monai_distill.networks.resnetap.ResNetAP` with one block per stage; ``depth`` is ignored;
    ``kwargs``: ``act``, ``stem_pools``."""
    return ResNetAP(spatial_dims, in_channels, num_classes, spatial_size, width=width, norm=norm, **kwargs)


@NETWORKS.register("lenet")
def _lenet(
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    spatial_size: Sequence[int],
    width: int = 128,
    depth: int = 3,
    norm: str = "instance",
    **kwargs: Any,
) -> DistillNet:
    """:class:`~monai_distill.networks.classic.LeNet`; fixed size as in the reference (``width``, ``depth`` and
    ``norm`` are ignored)."""
    return LeNet(spatial_dims, in_channels, num_classes, spatial_size, **kwargs)


@NETWORKS.register("alexnet")
def _alexnet(
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    spatial_size: Sequence[int],
    width: int = 128,
    depth: int = 3,
    norm: str = "instance",
    **kwargs: Any,
) -> DistillNet:
    """:class:`~monai_distill.networks.classic.AlexNet` (``width`` = first conv's channels; ``depth`` and ``norm``
    are ignored: the reference has no normalisation)."""
    return AlexNet(spatial_dims, in_channels, num_classes, spatial_size, width=width, **kwargs)


@NETWORKS.register("resnet18")
def _resnet18(
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    spatial_size: Sequence[int],
    width: int = 128,
    depth: int = 3,
    norm: str = "instance",
    **kwargs: Any,
) -> DistillNet:
    """MONAI ResNet-18 with its own (batch) norm; ``width``, ``depth``, ``norm`` are ignored, ``kwargs`` go to
    MONAI's ``ResNet``."""
    return build_resnet18(spatial_dims, in_channels, num_classes, spatial_size, **kwargs)


@NETWORKS.register("densenet121")
def _densenet121(
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    spatial_size: Sequence[int],
    width: int = 128,
    depth: int = 3,
    norm: str = "instance",
    **kwargs: Any,
) -> DistillNet:
    """MONAI DenseNet-121 with its own (batch) norm; ``width``, ``depth``, ``norm`` are ignored, ``kwargs`` go to
    :func:`~monai_distill.networks.monai_nets.build_densenet121`."""
    return build_densenet121(spatial_dims, in_channels, num_classes, spatial_size, **kwargs)


@NETWORKS.register("vit")
def _vit(
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    spatial_size: Sequence[int],
    width: int = 128,
    depth: int = 3,
    norm: str = "instance",
    **kwargs: Any,
) -> DistillNet:
    """MONAI ViT sized by ``width``/``depth`` (see :func:`~monai_distill.networks.monai_nets.build_vit`); ``norm``
    is ignored (layer norm throughout)."""
    return build_vit(spatial_dims, in_channels, num_classes, spatial_size, width=width, depth=depth, **kwargs)


def get_network(
    name: str,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    spatial_size: int | Sequence[int],
    width: int = 128,
    depth: int = 3,
    norm: str = "instance",
    **kwargs: Any,
) -> DistillNet:
    """Build a registered network for 2D or 3D classification.

    Every network has ``embed(x) -> (N, feature_dim)``, ``classifier`` (the final ``nn.Linear``) and
    ``forward(x) == classifier(embed(x))``, and works with ``torch.func.functional_call``.

    Args:
        name: one of :func:`network_names` (case-insensitive).
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output classes.
        spatial_size: input image size without batch/channel axes; an int is used for every axis.
        width: base channel count (ConvNet/ResNetAP/AlexNet channels, ViT hidden size / 2); ignored where fixed.
        depth: ConvNet blocks, ViT layers / 2; ignored elsewhere.
        norm: ``"instance"``, ``"batch"``, ``"layer"``, ``"group"`` or ``"none"`` for ConvNet and ResNetAP;
            the others keep their own normalisation.
        kwargs: network-specific options, passed to the builder (unknown ones raise ``TypeError``).

    Raises:
        KeyError: unknown ``name`` (the message lists the valid names).
        ValueError: inconsistent sizes or options.
    """
    builder = NETWORKS.get(name)
    if in_channels < 1 or num_classes < 1:
        raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}.")
    size = spatial_tuple(spatial_size, spatial_dims)
    return builder(spatial_dims, in_channels, num_classes, size, width=width, depth=depth, norm=norm, **kwargs)


def network_names() -> list[str]:
    """Sorted names of the registered networks."""
    return NETWORKS.names()
