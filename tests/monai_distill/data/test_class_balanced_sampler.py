"""ClassBalancedSampler on real BreastMNIST (147 malignant / 399 normal-benign training images)."""

from __future__ import annotations

import pytest
import torch

from monai_distill.data import ClassBalancedSampler, DataError, RealDataset


def test_balanced_counts(breast_train: RealDataset) -> None:
    sampler = ClassBalancedSampler(breast_train)
    idx = sampler.balanced_indices(10, torch.Generator().manual_seed(0))
    assert idx.shape == (20,)
    labels = breast_train.labels[idx]
    assert torch.bincount(labels, minlength=2).tolist() == [10, 10]
    # Class after class, as the docstring promises (distillers rely on this order for the synthetic labels).
    assert labels.tolist() == [0] * 10 + [1] * 10


def test_reproducible_with_same_generator(breast_train: RealDataset) -> None:
    sampler = ClassBalancedSampler(breast_train)
    a = sampler.balanced_indices(8, torch.Generator().manual_seed(123))
    b = sampler.balanced_indices(8, torch.Generator().manual_seed(123))
    c = sampler.balanced_indices(8, torch.Generator().manual_seed(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # The global RNG plays no part.
    torch.manual_seed(0)
    d = sampler.balanced_indices(8, torch.Generator().manual_seed(123))
    assert torch.equal(a, d)


def test_distinct_indices_and_images(breast_train: RealDataset) -> None:
    sampler = ClassBalancedSampler(breast_train)
    gen = torch.Generator().manual_seed(1)
    idx = sampler.sample_indices(0, 100, gen)
    assert len(set(idx.tolist())) == 100
    assert (breast_train.labels[idx] == 0).all()
    # Asking for more than a class holds returns every image of the class once.
    everything = sampler.sample_indices(0, 1000, gen)
    assert sorted(everything.tolist()) == breast_train.indices_of_class(0).tolist()
    images = sampler.sample(1, 5, torch.Generator().manual_seed(2))
    expected = breast_train.images[sampler.sample_indices(1, 5, torch.Generator().manual_seed(2))]
    assert torch.equal(images, expected)


def test_multilabel_rejected(breast_train: RealDataset) -> None:
    multi = RealDataset(
        images=breast_train.images[:4],
        labels=torch.zeros(4, 3, dtype=torch.long),
        num_classes=3,
        class_names=["a", "b", "c"],
        mean=breast_train.mean,
        std=breast_train.std,
        task="multi-label, binary-class",
    )
    with pytest.raises(DataError, match="single-label"):
        ClassBalancedSampler(multi)
