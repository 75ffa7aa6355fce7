"""How near synthetic images sit to the real training images they were made from.

Distances are root-mean-square differences per value (``||a - b||_2 / sqrt(D)``) in the dataset's normalised units,
so one threshold reads the same on 28 px and 64³ data. The reference point is the real data itself: for a sample of
real training images, the distance to the nearest *other* training image (leave-one-out) says how near two distinct
patients' images are. A synthetic image closer to a training image than the ``quantile`` of those real-to-real
distances is flagged as a near-copy: it is nearer to one patient than almost any patient is to another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import SSIMMetric

__all__ = [
    "NEAR_COPY_FLOOR",
    "NearestNeighbours",
    "PixelNearness",
    "near_copy_threshold",
    "nearest_neighbours",
    "pixel_nearness",
    "ssim_pairs",
    "summarise",
]

# Below this RMS distance (normalised units) two images are the same up to float rounding: it keeps an exact copy
# flagged when the real data holds duplicates, which would put the real-to-real quantile at 0.
NEAR_COPY_FLOOR = 1e-4


@dataclass
class NearestNeighbours:
    """The ``k`` nearest references of each query: ``distances`` (Q, k) ascending and their ``indices`` (Q, k)."""

    distances: torch.Tensor
    indices: torch.Tensor


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.detach().reshape(x.shape[0], -1).double()


@torch.no_grad()
def nearest_neighbours(
    queries: torch.Tensor,
    references: torch.Tensor,
    k: int = 3,
    exclude: torch.Tensor | None = None,
    chunk: int = 256,
    metric: str = "rms",
) -> NearestNeighbours:
    """The ``k`` nearest ``references`` of every query, by RMS distance (or cosine distance of features).

    Args:
        queries: (Q, ...) images or features.
        references: (R, ...) of the same shape per item.
        k: neighbours per query (at most R, or R - 1 with ``exclude``).
        exclude: (Q,) index into ``references`` of each query's own copy (leave-one-out), or ``None``.
        chunk: queries per distance block (bounds memory on 3D volumes).
        metric: ``rms`` (root-mean-square difference per value) or ``cosine`` (1 - cosine similarity).
    """
    if metric not in ("rms", "cosine"):
        raise ValueError(f"metric must be 'rms' or 'cosine', got {metric!r}.")
    q, r = _flat(queries), _flat(references)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} values per item but references have {r.shape[1]}.")
    k = max(1, min(int(k), r.shape[0] - (exclude is not None)))
    if metric == "cosine":
        q, r = F.normalize(q, dim=1), F.normalize(r, dim=1)
    dists, idx = [], []
    for s in range(0, q.shape[0], chunk):
        block = q[s : s + chunk]
        if metric == "rms":
            d = torch.cdist(block, r).div_(q.shape[1] ** 0.5)
        else:
            d = (1.0 - block @ r.T).clamp_min_(0.0)
        if exclude is not None:
            d[torch.arange(block.shape[0]), exclude[s : s + chunk]] = float("inf")
        v, i = torch.topk(d, k, dim=1, largest=False)
        dists.append(v.float())
        idx.append(i)
    return NearestNeighbours(torch.cat(dists), torch.cat(idx))


def near_copy_threshold(loo_distances: torch.Tensor, quantile: float = 0.01) -> float:
    """The ``quantile`` of real-to-real leave-one-out nearest distances, at least :data:`NEAR_COPY_FLOOR`."""
    return max(float(torch.quantile(loo_distances.double(), quantile)), NEAR_COPY_FLOOR)


@torch.no_grad()
def ssim_pairs(a: torch.Tensor, b: torch.Tensor, data_range: float, batch: int = 64) -> torch.Tensor:
    """SSIM (MONAI's :class:`~monai.metrics.SSIMMetric`, Gaussian window) of ``a[i]`` with ``b[i]``, shape (N,).

    The window shrinks to the image for images smaller than MONAI's default 11 pixels.
    """
    spatial = a.shape[2:]
    win = min(11, *(int(s) for s in spatial))
    win -= 1 - win % 2  # odd
    metric = SSIMMetric(spatial_dims=len(spatial), data_range=max(float(data_range), 1e-8), win_size=win,
                        reduction="none")
    out = [metric(a[s : s + batch].float(), b[s : s + batch].float()).reshape(-1) for s in range(0, a.shape[0], batch)]
    return torch.cat(out) if out else torch.zeros(0)


def summarise(values: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Min, median, mean and max of ``values`` (NaN-free floats) for the card's tables."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return {"min": float("nan"), "median": float("nan"), "mean": float("nan"), "max": float("nan")}
    return {"min": float(v.min()), "median": float(np.median(v)), "mean": float(v.mean()), "max": float(v.max())}



@dataclass
class PixelNearness:
    """Pixel-space nearness of synthetic images to the real images they came from.

    Attributes:
        neighbours: each synthetic image's nearest real images (RMS distances ascending, indices into ``real``).
        ssim: (Q,) SSIM of each synthetic image with its nearest real image.
        threshold: the near-copy threshold (:func:`near_copy_threshold` of ``reference``).
        flags: (Q,) bool, near-copies.
        reference: the leave-one-out nearest distances of the real sample that set the threshold.
        sample: indices of that sample in ``real``.
        data_range: value range of the real images (the SSIM's ``data_range``).
    """

    neighbours: NearestNeighbours
    ssim: torch.Tensor
    threshold: float
    flags: torch.Tensor
    reference: torch.Tensor
    sample: torch.Tensor
    data_range: float

    def summary(self, quantile: float) -> dict:
        """The figures a card shows: threshold and its rule, near-copies, distance and SSIM summaries."""
        return {
            "pixel_threshold": self.threshold,
            "threshold_rule": (f"RMS distance <= the {100 * quantile:g} % quantile of {len(self.sample)} real images' "
                               "distances to their nearest other real image (at least 1e-4)"),
            "n_near_copies": int(self.flags.sum()),
            "near_copies": torch.nonzero(self.flags).flatten().tolist(),
            "synthetic": {"pixel_rms": summarise(self.neighbours.distances[:, 0]), "ssim": summarise(self.ssim)},
            "real_to_real": {"pixel_rms": summarise(self.reference)},
        }


def pixel_nearness(syn: torch.Tensor, real: torch.Tensor, neighbours: int = 3, quantile: float = 0.01,
                   n_reference: int = 200, seed: int = 0) -> PixelNearness:
    """Nearest real images of each synthetic one, SSIM to the nearest, and the near-copy flags.

    Args:
        syn: (Q, C, ...) synthetic images, in the units of ``real``.
        real: (R, C, ...) the real images (the train split, or a slide's patches).
        neighbours: nearest real images kept per synthetic image.
        quantile: the near-copy threshold's quantile of real-to-real leave-one-out distances.
        n_reference: real images (a seeded sample) whose leave-one-out distances set the threshold.
        seed: seed of that sample.
    """
    syn = syn.detach().float().cpu()
    real = real.detach().float().cpu()
    sample = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[: min(n_reference, len(real))]
    nn = nearest_neighbours(syn, real, k=neighbours)
    loo = nearest_neighbours(real[sample], real, k=1, exclude=sample) if len(real) > 1 else None
    reference = loo.distances[:, 0] if loo is not None else torch.full((1,), NEAR_COPY_FLOOR)
    threshold = near_copy_threshold(reference, quantile)
    data_range = float(real.max() - real.min())
    ssim = ssim_pairs(syn, real[nn.indices[:, 0]], data_range)
    return PixelNearness(nn, ssim, threshold, nn.distances[:, 0] <= threshold, reference, sample, data_range)
