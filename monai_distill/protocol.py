"""Ranking methods over independent distillation seeds.

One distillation seed is one draw of everything random in a method (experts, initial images, sampling); the K
evaluation networks of one set only measure the noise of training on that set. Two seeds of the same method can
differ by more than two methods do, so a benchmark cell is summarised over >= 3 seeds: the mean and standard
deviation over seeds of each seed's K-network mean, and, against a baseline run on the same seeds (the best
coreset), the per-seed paired difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["HEADLINE", "aggregate_seeds", "paired_difference"]

# Headline metrics of a cell: balanced accuracy and macro AUC rank methods; raw and prior-corrected accuracy are
# reported beside them.
HEADLINE = ("test_balanced_acc_mean", "test_auc_mean", "test_acc_mean", "test_acc_prior_mean")


def _values(runs: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in runs if r.get(key) is not None and not math.isnan(float(r[key]))])


def aggregate_seeds(runs: Sequence[Mapping[str, Any]], keys: Sequence[str] = HEADLINE) -> dict[str, Any]:
    """Mean and standard deviation over distillation seeds of each of ``keys``.

    Args:
        runs: one ``metrics.json`` (or its record entry) per distillation seed.
        keys: metrics to aggregate; a key missing from every run is left out.

    Returns:
        ``{"n_seeds": n, "<key>": mean, "<key>_seed_std": std, ...}``; the std is the population std (ddof 0) of
        the per-seed means, 0 for one seed.

    Raises:
        ValueError: no run given.
    """
    if not runs:
        raise ValueError("aggregate_seeds needs at least one run.")
    out: dict[str, Any] = {"n_seeds": len(runs)}
    for key in keys:
        vals = _values(runs, key)
        if vals.size:
            out[key] = float(vals.mean())
            out[f"{key}_seed_std"] = float(vals.std())
    return out


def paired_difference(
    runs: Mapping[int, Mapping[str, Any]], baseline: Mapping[int, Mapping[str, Any]], key: str = HEADLINE[0]
) -> dict[str, Any]:
    """``runs - baseline`` on ``key``, paired by distillation seed.

    Args:
        runs: seed -> metrics of the method.
        baseline: seed -> metrics of the baseline (e.g. the best coreset) on the same seeds.
        key: the metric compared.

    Returns:
        ``{"n_pairs", "mean", "std", "wins"}``: mean and std of the per-seed differences and the number of seeds on
        which the method is ahead.

    Raises:
        ValueError: the two share no seed.
    """
    seeds = sorted(set(runs) & set(baseline))
    if not seeds:
        raise ValueError(f"no common seed: method has {sorted(runs)}, baseline has {sorted(baseline)}.")
    diff = np.array([float(runs[s][key]) - float(baseline[s][key]) for s in seeds])
    return {"n_pairs": len(seeds), "mean": float(diff.mean()), "std": float(diff.std()), "wins": int((diff > 0).sum())}
