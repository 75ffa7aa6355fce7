"""LeNet and the small AlexNet of the DC reference, in 2D and 3D (cross-architecture evaluation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Pool
from torch import nn

from monai_distill.networks.base import DistillNet, spatial_tuple

__all__ = ["AlexNet", "LeNet"]


def _pads_like_mnist(in_channels: int, size: Sequence[int]) -> bool:
    """Whether to use the references' MNIST padding.

    The references pad 1-channel (MNIST, 28 px) inputs more than 3-channel (CIFAR, 32 px) ones so that both reach
    the same feature-map size; colour MedMNIST is 28 px too, so the size below 32 px also selects that padding.
    """
    return in_channels == 1 or min(size) < 32


def _flat_features(features: nn.Module, in_channels: int, size: Sequence[int], name: str) -> int:
    """Flattened output size of ``features`` for one input, found with a dummy forward pass."""
    try:
        with torch.no_grad():
            return int(features(torch.zeros(1, in_channels, *size)).flatten(1).shape[1])
    except RuntimeError as e:
        raise ValueError(f"{name}: spatial_size {tuple(size)} is too small for this architecture ({e}).") from e


class LeNet(DistillNet):
    """LeNet-5 as in the DC reference: conv5(6) → ReLU → maxpool2 → conv5(16) → ReLU → maxpool2 → FC 120 → FC 84
    → ``classifier``. ``embed`` returns the 84 features after ReLU.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output classes.
        spatial_size: input size (int or one per axis).
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, num_classes: int, spatial_size: int | Sequence[int]
    ) -> None:
        super().__init__()
        size = spatial_tuple(spatial_size, spatial_dims)
        conv = Conv[Conv.CONV, spatial_dims]
        pool = Pool[Pool.MAX, spatial_dims]
        self.features = nn.Sequential(
            conv(in_channels, 6, kernel_size=5, padding=2 if _pads_like_mnist(in_channels, size) else 0),
            nn.ReLU(),
            pool(kernel_size=2, stride=2),
            conv(6, 16, kernel_size=5),
            nn.ReLU(),
            pool(kernel_size=2, stride=2),
        )
        flat = _flat_features(self.features, in_channels, size, "lenet")
        self.fc_1 = nn.Linear(flat, 120)
        self.fc_2 = nn.Linear(120, 84)
        self.feature_dim = 84
        self.classifier = nn.Linear(84, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)
        return F.relu(self.fc_2(F.relu(self.fc_1(x))))


class AlexNet(DistillNet):
    """The DC reference's small AlexNet: conv5(w) → ReLU → maxpool2 → conv5(1.5w) → ReLU → maxpool2 → conv3(2w)
    → ReLU → conv3(1.5w) → ReLU → conv3(1.5w) → ReLU → maxpool2 → flatten → ``classifier``.

    ``width=128`` gives the reference's 128/192/256/192/192 channels; smaller widths scale all of them (tests).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output classes.
        spatial_size: input size (int or one per axis).
        width: channels of the first conv.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        spatial_size: int | Sequence[int],
        width: int = 128,
    ) -> None:
        super().__init__()
        size = spatial_tuple(spatial_size, spatial_dims)
        c1, c2, c3 = width, max(1, round(1.5 * width)), 2 * width
        conv = Conv[Conv.CONV, spatial_dims]
        pool = Pool[Pool.MAX, spatial_dims]
        self.features = nn.Sequential(
            conv(in_channels, c1, kernel_size=5, padding=4 if _pads_like_mnist(in_channels, size) else 2),
            nn.ReLU(),
            pool(kernel_size=2, stride=2),
            conv(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(),
            pool(kernel_size=2, stride=2),
            conv(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(),
            conv(c3, c2, kernel_size=3, padding=1),
            nn.ReLU(),
            conv(c2, c2, kernel_size=3, padding=1),
            nn.ReLU(),
            pool(kernel_size=2, stride=2),
        )
        self.feature_dim = _flat_features(self.features, in_channels, size, "alexnet")
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)
