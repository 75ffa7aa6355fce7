"""Annotation-free groups of a slide's patches, so that per-slide distillation keeps small distinct regions.

Per-slide distillation with the slide label on every patch averages a small lesion into the slide's majority tissue
(``benchmarks/results/mil_hard.md``: synthetic-bag AUC 0.39-0.79 against 1.00 on real bags when the positive region
is 3-8 % of the tissue). Annotation masks fix it, but most cohorts (TCGA) have slide labels only. Here the patches of
one slide are split without patch labels: each patch is embedded by a small encoder trained once per cohort on the
cohort sample with the *slide* labels only (:func:`train_cohort_encoder`; what tells positive slides from negative
ones is their small region, so that is what its features pick out), the embeddings are L2-normalised and reduced by
PCA, and k-means splits them into ``k = min(max_groups, N // min_group_size)`` groups, so the number of groups follows
the slide's size. Measured on the hard cohort's 13 positive training slides (a region of 2-8 patches in about 90;
the cohort's annotation masks used only to score): with the cohort encoder the region's group is mostly region
(precision >= 0.5) in 12 of 13 slides at ``k = 8`` (mean precision 0.84, recall 0.86) and 9 of 13 at ``k = 4``; with
the random frozen MIL encoder of :mod:`mil.features` in 8-9 of 13 at ``k = 8``. A silhouette-chosen ``k`` picks 2,
a split along tissue edges that never isolates the region, hence the fixed over-split: over-splitting a uniform
slide costs only more, smaller groups. Each group is then distilled on its own
(:class:`~mil.synthetic_bags.SyntheticBagsWorkflow` with ``grouping="cluster"``), and the bag records which group each
synthetic patch stands for and how many real patches that group held (``meta["groups"]``, ``meta["group_sizes"]``),
for heads that weight instances.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from monai_distill.checks import OptionError
from monai_distill.networks import get_network

from .features import EncoderConfig, FrozenEncoder

__all__ = ["GROUPINGS", "CohortEncoder", "GroupingConfig", "PatchGroups", "build_encoder", "embed_patches",
           "group_patches", "split_budget", "train_cohort_encoder"]

# "slide_label": one group per slide (the paper's per-slide distillation); "cluster": the groups of this module
GROUPINGS = ("slide_label", "cluster")


@dataclass
class GroupingConfig:
    """How a slide's patches are grouped.

    Args:
        max_groups: most groups per slide.
        min_group_size: patches per group on average at least: a slide of ``N`` patches gets at most
            ``N // min_group_size`` groups (k-means may still leave a smaller one: a region of 2 patches is kept).
        pca_dims: embedding dimensions kept before k-means (bounded by the number of patches).
        encoder: ``"cohort"`` (trained on the cohort sample with slide labels, :func:`train_cohort_encoder`) or the
            fields of a frozen :class:`~mil.features.EncoderConfig` (``{}``: the MIL default, random weights).
        encoder_epochs: epochs of the cohort encoder.
        encoder_width: width of the cohort encoder (ResNetAP-10 with batch norm: instance norm would erase the stain
            colour that tells tissues apart; measured: 0 of 13 regions found with it).
        batch_size: patches per encoder pass.
    """

    max_groups: int = 8
    min_group_size: int = 4
    pca_dims: int = 16
    encoder: str | dict[str, Any] = "cohort"
    encoder_epochs: int = 10
    encoder_width: int = 16
    batch_size: int = 256

    def __post_init__(self) -> None:
        if isinstance(self.encoder, str) and self.encoder != "cohort":
            raise OptionError(f"--grouping_options encoder must be 'cohort' or an encoder config dict, got "
                              f"{self.encoder!r}.")
        for key in ("max_groups", "min_group_size", "pca_dims", "encoder_width", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise OptionError(f"--grouping_options {key} must be >= 1, got {getattr(self, key)}.")

    @classmethod
    def from_any(cls, value: GroupingConfig | dict[str, Any] | None) -> GroupingConfig:
        if isinstance(value, GroupingConfig):
            return value
        value = dict(value or {})
        unknown = set(value) - set(cls.__dataclass_fields__)
        if unknown:
            raise OptionError(f"--grouping_options: unknown setting(s) {sorted(unknown)}; valid: "
                              f"{sorted(cls.__dataclass_fields__)}.")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PatchGroups:
    """The groups of one slide.

    Attributes:
        labels: ``(N,)`` group of each patch, ``0 .. k-1`` by decreasing size.
        sizes: patches per group.
        silhouette: mean silhouette of the split (``None`` for one group), recorded for the reader.
    """

    labels: np.ndarray
    sizes: list[int]
    silhouette: float | None = None

    @property
    def k(self) -> int:
        return len(self.sizes)


class CohortEncoder(nn.Module):
    """A network trained on the cohort sample, used frozen: [0, 1] patches -> its embedding.

    Args:
        net: a factory network (its ``embed`` gives the features).
        mean: per-channel mean of the cohort's [0, 1] patches.
        std: per-channel std of the cohort's [0, 1] patches.
    """

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.eval().requires_grad_(False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net.embed((pixels - self.mean) / self.std).flatten(1).float()


def cohort_network(in_channels: int, patch_size: int, num_classes: int, width: int) -> nn.Module:
    """The cohort encoder's network: ResNetAP-10 with batch norm (see :class:`GroupingConfig`)."""
    return get_network("resnetap10", 2, in_channels, num_classes, patch_size, width=width, norm="batch")


def train_cohort_encoder(images: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: GroupingConfig,
                         seed: int = 0, device: torch.device | str = "cpu") -> CohortEncoder:
    """Train the grouping encoder on the cohort sample: [0, 1] patches ``images`` with their slide labels.

    Adam (lr 1e-3), batches of 64, ``cfg.encoder_epochs`` epochs, seeded; the global RNG is left untouched.
    """
    mean = images.mean(dim=(0, 2, 3)).tolist()
    std = images.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = cohort_network(images.shape[1], images.shape[-1], num_classes, int(cfg.encoder_width))
    encoder = CohortEncoder(net, mean, std).to(device)
    net.train().requires_grad_(True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(int(cfg.encoder_epochs)):
        order = torch.randperm(len(images), generator=gen)
        for start in range(0, len(images), 64):
            idx = order[start : start + 64]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            x = (images[idx].to(device) - encoder.mean) / encoder.std
            loss = F.cross_entropy(net(x), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return encoder.eval().requires_grad_(False)


@torch.no_grad()
def embed_patches(pixels: torch.Tensor, encoder: nn.Module, batch_size: int = 256) -> np.ndarray:
    """``(N, F)`` float32 embeddings of uint8 or [0, 1] patches ``(N, C, H, W)`` by a frozen ``encoder`` that takes
    [0, 1] pixels (:class:`CohortEncoder`, :class:`~mil.features.FrozenEncoder`)."""
    device = next(encoder.buffers()).device
    out = []
    for start in range(0, len(pixels), max(1, int(batch_size))):
        x = pixels[start : start + batch_size].to(device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        out.append(encoder(x).cpu())
    return torch.cat(out).numpy()


def _reduce(features: np.ndarray, dims: int) -> np.ndarray:
    """L2-normalised features, centred and projected on their first ``dims`` principal components."""
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    x = x - x.mean(0, keepdims=True)
    dims = max(1, min(int(dims), x.shape[0] - 1, x.shape[1]))
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:dims].T


def group_patches(features: np.ndarray, cfg: GroupingConfig | None = None, seed: int = 0) -> PatchGroups:
    """Split one slide's patch embeddings into groups (see the module doc for the rule).

    Args:
        features: ``(N, F)`` embeddings of the slide's patches.
        cfg: the grouping settings.
        seed: seed of k-means (the split is deterministic for a seed).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    cfg = cfg or GroupingConfig()
    n = len(features)
    k = min(int(cfg.max_groups), n // int(cfg.min_group_size))
    if k < 2:
        return PatchGroups(np.zeros(n, dtype=np.int64), [n])
    x = _reduce(np.asarray(features, dtype=np.float64), cfg.pca_dims)
    labels = KMeans(n_clusters=k, n_init=4, random_state=int(seed)).fit_predict(x)
    counts = np.bincount(labels, minlength=k)
    order = np.argsort(-counts, kind="stable")
    order = order[counts[order] > 0]  # k-means on repeated points may leave a cluster empty
    relabel = np.full(k, -1, dtype=np.int64)
    relabel[order] = np.arange(len(order))
    labels = relabel[labels]
    silhouette = float(silhouette_score(x, labels)) if len(order) > 1 else None
    return PatchGroups(labels, np.bincount(labels).tolist(), silhouette)


def split_budget(ipc: int, sizes: list[int]) -> list[int]:
    """Synthetic patches per group: an equal share of the slide's ``ipc`` (rounded up), at most the group's size.

    An equal share, not one proportional to size, is the point: a region of 4 patches in 90 would get no patch of
    its own in proportion, and it is the region a slide-level head must find.
    """
    share = -(-int(ipc) // max(1, len(sizes)))
    return [max(1, min(share, int(s))) for s in sizes]


def build_encoder(cfg: GroupingConfig, in_channels: int, patch_size: int, device: torch.device | str = "cpu"
                  ) -> FrozenEncoder:
    """The frozen encoder of ``cfg`` (an :class:`~mil.features.EncoderConfig`) for ``in_channels`` x
    ``patch_size`` patches."""
    enc_cfg = EncoderConfig.from_any(None if cfg.encoder == "cohort" else cfg.encoder)
    return FrozenEncoder(enc_cfg, in_channels, enc_cfg.input_size or int(patch_size)).to(device)
