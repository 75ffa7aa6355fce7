"""Membership inference against networks trained on a synthetic set, a real subset or the full data.

Two attacks score each candidate image ``x`` with label ``y``; a higher score says "member":

* **loss threshold** (Yeom et al., CSF 2018): ``s(x) = -mean_k CE(f_k(x), y)`` over the target networks ``f_k``.
  Members of a network's training data tend to have lower loss.
* **calibrated** (difficulty calibration, Watson et al., ICLR 2022): ``s(x) = CE(g(x), y) - mean_k CE(f_k(x), y)``
  with a reference network ``g`` trained on held-out real data that contains no candidate. It removes how hard
  ``x`` is for any network, which the plain loss attack mistakes for membership. One reference network is a weak
  form of the per-example reference models of LiRA (Carlini et al., S&P 2022); the card says so.

Members are real training images (the source of the synthetic set, or the images a real subset holds);
non-members are held-out images never used to train or distil. The AUC of the score separating the two and the
TPR at 1 % FPR are reported with percentile bootstrap intervals (members and non-members resampled separately).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation import map_batches

__all__ = ["AttackResult", "attack", "per_example_loss", "tpr_at_fpr"]


@torch.no_grad()
def per_example_loss(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     device: torch.device) -> torch.Tensor:
    """Cross-entropy of ``net`` (eval mode) on each ``(image, label)``, shape (N,), float64 on CPU."""
    was_training = net.training
    net.eval()
    logits = map_batches(net, images, device)
    net.train(was_training)
    return F.cross_entropy(logits.double(), labels.long().cpu(), reduction="none")


def _auc_batch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ROC AUC of members ``a`` (B, n) against non-members ``b`` (B, m), per row: P(a > b) + P(a = b) / 2."""
    diff = a[:, :, None] - b[:, None, :]
    return (diff > 0).mean(axis=(1, 2)) + 0.5 * (diff == 0).mean(axis=(1, 2))


def _tpr_batch(a: np.ndarray, b: np.ndarray, fpr: float) -> np.ndarray:
    """Per row, the highest TPR of a threshold ``score >= t`` whose FPR is at most ``fpr``.

    At most ``k = floor(fpr * m)`` non-members may reach the threshold, so the best threshold lies just above the
    (k + 1)-th highest non-member score (ties included), and the TPR is the share of members above that score.
    """
    m = b.shape[1]
    k = int(np.floor(fpr * m + 1e-9))
    if k >= m:
        return np.ones(a.shape[0])
    cut = -np.sort(-b, axis=1)[:, k]
    return (a > cut[:, None]).mean(axis=1)


def tpr_at_fpr(scores_in: np.ndarray, scores_out: np.ndarray, fpr: float = 0.01) -> float:
    """The highest true-positive rate among thresholds whose false-positive rate is at most ``fpr``."""
    a, b = np.asarray(scores_in, dtype=np.float64), np.asarray(scores_out, dtype=np.float64)
    return float(_tpr_batch(a[None], b[None], fpr)[0])


@dataclass
class AttackResult:
    """AUC and TPR at ``fpr`` of one attack, with ``level`` bootstrap intervals ``(low, high)``."""

    auc: float
    auc_ci: tuple[float, float]
    tpr: float
    tpr_ci: tuple[float, float]
    n_members: int
    n_nonmembers: int
    fpr: float = 0.01

    def to_dict(self) -> dict[str, float | int | list[float]]:
        return {"auc": self.auc, "auc_ci": list(self.auc_ci), f"tpr_at_{self.fpr:g}_fpr": self.tpr,
                "tpr_ci": list(self.tpr_ci), "n_members": self.n_members, "n_nonmembers": self.n_nonmembers}


def attack(scores_in: torch.Tensor | np.ndarray, scores_out: torch.Tensor | np.ndarray, fpr: float = 0.01,
           n_boot: int = 200, level: float = 0.95, seed: int = 0) -> AttackResult:
    """Score a membership attack: AUC and TPR at ``fpr`` of ``scores_in`` (members) against ``scores_out``.

    Args:
        scores_in: attack scores of members (higher = member).
        scores_out: attack scores of non-members.
        fpr: false-positive rate of the TPR column.
        n_boot: bootstrap resamples for the intervals (0: none, the interval is the point).
        level: coverage of the percentile intervals.
        seed: seed of the resampling.
    """
    a, b = np.asarray(scores_in, dtype=np.float64), np.asarray(scores_out, dtype=np.float64)
    if len(a) < 1 or len(b) < 1:
        raise ValueError(f"an attack needs members and non-members, got {len(a)} and {len(b)}.")
    auc, tpr = float(_auc_batch(a[None], b[None])[0]), tpr_at_fpr(a, b, fpr)
    rng = np.random.default_rng(seed)
    aucs, tprs = np.zeros(0), np.zeros(0)
    for start in range(0, int(n_boot), 50):  # 50 resamples at a time bound the (B, n, m) comparison array
        rows = min(50, int(n_boot) - start)
        ra = a[rng.integers(0, len(a), (rows, len(a)))]
        rb = b[rng.integers(0, len(b), (rows, len(b)))]
        aucs, tprs = np.r_[aucs, _auc_batch(ra, rb)], np.r_[tprs, _tpr_batch(ra, rb, fpr)]
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

    def interval(v: np.ndarray, point: float) -> tuple[float, float]:
        return (float(np.percentile(v, q[0])), float(np.percentile(v, q[1]))) if len(v) else (point, point)

    return AttackResult(auc, interval(aucs, auc), tpr, interval(tprs, tpr), len(a), len(b), fpr)
