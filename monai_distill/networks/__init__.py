"""Networks for distillation and cross-architecture evaluation, 2D and 3D, built by :func:`get_network`.

Every network has ``embed(x) -> (N, feature_dim)``, ``classifier`` (the final ``nn.Linear``) and
``forward(x) == classifier(embed(x))``. Registered names: ``convnet``, ``resnetap10``, ``lenet``, ``alexnet``,
``resnet18``, ``densenet121``, ``vit``.
"""

from monai_distill.networks.base import NORM_TYPES, DistillNet, make_act, make_norm
from monai_distill.networks.classic import AlexNet, LeNet
from monai_distill.networks.convnet import ConvNet, convnet_padding
from monai_distill.networks.factory import NETWORKS, NetworkBuilder, get_network, network_names
from monai_distill.networks.monai_nets import MonaiClassifier, vit_patch_size
from monai_distill.networks.resnetap import ResNetAP

__all__ = [
    "NETWORKS",
    "NORM_TYPES",
    "AlexNet",
    "ConvNet",
    "DistillNet",
    "LeNet",
    "MonaiClassifier",
    "NetworkBuilder",
    "ResNetAP",
    "convnet_padding",
    "get_network",
    "make_act",
    "make_norm",
    "network_names",
    "vit_patch_size",
]
