"""Coresets on real data: random, herding and forgetting select ipc real images per class."""

from __future__ import annotations

import pytest
import torch

from monai_distill.data import load_medmnist
from monai_distill.methods import DistillConfig, get_method, method_names
from monai_distill.presets import get_preset

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def breast(medmnist_dir):
    return load_medmnist("breastmnist", "train", medmnist_dir)


def _run(name, real, ipc=4, seed=0, **preset):
    cfg = DistillConfig(ipc=ipc, arch="convnet", preset=get_preset("quick", real.spatial_dims, width=8, **preset),
                        seed=seed)
    d = get_method(name)(real, cfg, CPU)
    d.init_synthetic()
    return d.synthetic_set()


@pytest.mark.parametrize("name", ["random", "herding", "forgetting"])
def test_coreset_selects_real_images_per_class(name, breast):
    syn = _run(name, breast, embed_epochs=2, forgetting_epochs=2)
    assert syn.images.shape == (8, 1, 28, 28)
    assert torch.bincount(syn.labels, minlength=2).tolist() == [4, 4]
    idx = torch.tensor(syn.meta["indices"])
    assert len(set(idx.tolist())) == 8
    assert torch.equal(syn.images, breast.images[idx])
    assert torch.equal(syn.labels, breast.labels[idx])
    assert syn.meta["method"] == name and syn.meta["dataset"] == "breastmnist"
    again = _run(name, breast, embed_epochs=2, forgetting_epochs=2)
    assert again.meta["indices"] == syn.meta["indices"]


def test_herding_mean_is_closer_than_random(breast):
    """Herding's selected embeddings approximate the class mean better than a random pick (its purpose)."""
    from monai_distill.methods.coresets import HerdingCoreset

    cfg = DistillConfig(ipc=5, preset=get_preset("quick", 2, width=8, embed_epochs=2), seed=0)
    h = HerdingCoreset(breast, cfg, CPU)
    net = h._trained_network(2)
    feats = h._embed(net)
    sel = h.select()
    rnd = get_method("random")(breast, cfg, CPU).select()
    for c in range(2):
        mu = feats[breast.labels == c].mean(0)
        err_h = (feats[sel[breast.labels[sel] == c]].mean(0) - mu).norm()
        err_r = (feats[rnd[breast.labels[rnd] == c]].mean(0) - mu).norm()
        assert err_h < err_r


def test_3d_random_coreset(medmnist_dir):
    real = load_medmnist("adrenalmnist3d", "train", medmnist_dir)
    syn = _run("random", real, ipc=2)
    assert syn.images.shape == (4, 1, 28, 28, 28)


def test_errors(breast):
    with pytest.raises(KeyError, match=r"valid names: .*herding.*random"):
        get_method("kmeans")
    assert {"random", "herding", "forgetting"} <= set(method_names())
    with pytest.raises(ValueError, match="largest valid ipc is 147"):
        _run("random", breast, ipc=200)
