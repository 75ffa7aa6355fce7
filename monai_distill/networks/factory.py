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


def _register(name: str, build: Callable[..., DistillNet], uses: tuple[str, ...]) -> None:
    """Register ``build`` under ``name``, passing on only the shared options (width/depth/norm) it ``uses``.

    Networks with a fixed size or their own normalisation (LeNet, the MONAI nets) ignore the others, so one
    config can name any architecture for cross-architecture evaluation.
    """

    def builder(
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        spatial_size: Sequence[int],
        width: int = 128,
        depth: int = 3,
        norm: str = "instance",
        **kwargs: Any,
    ) -> DistillNet:
        shared = {"width": width, "depth": depth, "norm": norm}
        kwargs.update({k: shared[k] for k in uses})
        return build(spatial_dims, in_channels, num_classes, spatial_size, **kwargs)

    builder.__doc__ = f"{getattr(build, '__name__', name)} with the shared options {uses or 'none'}."
    NETWORKS.register(name, builder)


# name, builder, shared options it uses; extra kwargs go straight to the builder (unknown ones raise TypeError):
# convnet: act, pooling; resnetap10: act, stem_pools (one block per stage, depth ignored); lenet: fixed size;
# alexnet: width = first conv's channels (no norm, as the reference); resnet18/densenet121: MONAI's own batch norm,
# kwargs to MONAI; vit: hidden size 2*width, 2*depth layers, layer norm (see monai_nets.build_vit).
for _name, _build, _uses in (
    ("convnet", ConvNet, ("width", "depth", "norm")),
    ("resnetap10", ResNetAP, ("width", "norm")),
    ("lenet", LeNet, ()),
    ("alexnet", AlexNet, ("width",)),
    ("resnet18", build_resnet18, ()),
    ("densenet121", build_densenet121, ()),
    ("vit", build_vit, ("width", "depth")),
):
    _register(_name, _build, _uses)


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
