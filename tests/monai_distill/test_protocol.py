"""Aggregation over distillation seeds and the paired comparison against a baseline."""

from __future__ import annotations

import math

import pytest

from monai_distill.protocol import aggregate_seeds, paired_difference


def test_aggregate_over_seeds_by_hand():
    runs = [{"test_balanced_acc_mean": 0.6, "test_auc_mean": 0.7, "test_acc_mean": 0.5},
            {"test_balanced_acc_mean": 0.8, "test_auc_mean": 0.9, "test_acc_mean": 0.7},
            {"test_balanced_acc_mean": 0.7, "test_auc_mean": 0.8, "test_acc_mean": float("nan")}]
    agg = aggregate_seeds(runs)
    assert agg["n_seeds"] == 3
    assert agg["test_balanced_acc_mean"] == pytest.approx(0.7)
    assert agg["test_balanced_acc_mean_seed_std"] == pytest.approx(math.sqrt(2 / 300))
    assert agg["test_auc_mean"] == pytest.approx(0.8)
    assert agg["test_acc_mean"] == pytest.approx(0.6)  # a NaN seed is left out, not propagated
    assert "test_acc_prior_mean" not in agg  # absent from every run


def test_one_seed_has_zero_spread_and_none_is_an_error():
    assert aggregate_seeds([{"test_auc_mean": 0.5}])["test_auc_mean_seed_std"] == 0.0
    with pytest.raises(ValueError, match="at least one run"):
        aggregate_seeds([])


def test_paired_difference_uses_common_seeds_only():
    key = "test_balanced_acc_mean"
    method = {0: {key: 0.7}, 1: {key: 0.6}, 2: {key: 0.9}}
    base = {0: {key: 0.6}, 1: {key: 0.65}, 5: {key: 0.1}}
    d = paired_difference(method, base)
    assert d["n_pairs"] == 2 and d["wins"] == 1
    assert d["mean"] == pytest.approx(0.025) and d["std"] == pytest.approx(0.075)
    with pytest.raises(ValueError, match="no common seed"):
        paired_difference({3: {}}, {4: {}})
