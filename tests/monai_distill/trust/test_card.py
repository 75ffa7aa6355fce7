"""Trust cards on real BreastMNIST: near-copy flags, membership attacks, the settings hash, the bundle entry."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from monai_distill.checks import OptionError
from monai_distill.data import SyntheticSet, load_dataset
from monai_distill.networks import get_network
from monai_distill.presets import get_preset
from monai_distill.trust import CARD_FILES, CardOptions, TrustCard, attack, nearest_neighbours, per_example_loss
from monai_distill.workflows import CardWorkflow, DistillWorkflow

FAST = {"eval_models": 1, "eval_epochs": 3, "preset_overrides": {"width": 8}, "progress": False, "device": "cpu"}
CHEAP_CARD = {"real_epochs": 1, "n_boot": 20, "n_attack": 60}


@pytest.fixture(scope="module")
def breast(medmnist_dir):
    return {s: load_dataset("breastmnist", split=s, dataset_dir=str(medmnist_dir)) for s in ("train", "val", "test")}


def _card(breast, syn: SyntheticSet, **options) -> tuple[TrustCard, dict]:
    preset = get_preset("quick", 2, width=8, eval_epochs=3)
    builder = TrustCard(syn, breast["train"], breast["test"], breast["val"], "convnet", preset, 0,
                        torch.device("cpu"), {**CHEAP_CARD, **options})
    builder.train_targets(1)
    return builder, builder.build({"test": 1})


def test_exact_copy_is_flagged_and_noise_is_not(breast):
    train = breast["train"]
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn((3, *train.images.shape[1:]), generator=gen) * train.images.std() + train.images.mean()
    images = torch.cat([train.images[[5]], noise])
    syn = SyntheticSet(images, torch.tensor([int(train.labels[5]), 0, 1, 0]),
                       meta={"mean": train.mean, "std": train.std, "num_classes": 2})
    _, card = _card(breast, syn, attack=False)
    flags = [row["near_copy"] for row in card["per_image"]]
    assert flags == [True, False, False, False]
    assert card["per_image"][0]["nearest_train"][0] == 5 and card["per_image"][0]["pixel_rms"] < 1e-6
    assert card["per_image"][0]["ssim"] > 0.999 and all(r["ssim"] < 0.5 for r in card["per_image"][1:])
    assert card["nearness"]["n_near_copies"] == 1 and card["nearness"]["pixel_threshold"] > 0
    # The real reference: distinct patients are not near-copies of each other at the stated quantile.
    assert card["nearness"]["real_subset"]["n_near_copies_loo"] <= 1
    assert card["membership"] == {"skipped": "attack off (card_options.attack false)"}


def test_3d_card_on_adrenalmnist3d(medmnist_dir, tmp_path):
    """Volumes: RMS and SSIM in 3D, the neighbours PNG of middle slices, the attack on 3D networks."""
    from monai_distill.trust import write_card

    splits = {s: load_dataset("adrenalmnist3d", split=s, dataset_dir=str(medmnist_dir)) for s in ("train", "val",
                                                                                                     "test")}
    train = splits["train"]
    noise = torch.randn((1, *train.images.shape[1:]), generator=torch.Generator().manual_seed(0))
    syn = SyntheticSet(torch.cat([train.images[[0]], noise]), train.labels[[0, 1]].clone(),
                       meta={"mean": train.mean, "std": train.std, "num_classes": 2})
    preset = get_preset("quick", 3, width=4, eval_epochs=1, embed_epochs=1)
    builder = TrustCard(syn, train, splits["test"], splits["val"], "convnet", preset, 0, torch.device("cpu"),
                        {"max_real_images": 40, "n_attack": 30, "n_boot": 10, "n_reference": 40})
    builder.train_targets(1)
    card = builder.build({"test": 3})
    assert [r["near_copy"] for r in card["per_image"]] == [True, False]
    assert card["per_image"][0]["nearest_train"][0] == 0 and card["per_image"][0]["ssim"] > 0.999
    assert card["membership"]["full_data"]["n_train"] == 40
    paths = write_card(card, builder, tmp_path)
    assert all(p.is_file() for p in paths) and paths[2].stat().st_size > 1000


def test_real_data_networks_are_cached_and_reused(breast, tmp_path, monkeypatch):
    """The full-data target, calibration reference and real subset depend on the data only: a second card of another
    set (same seed, same class counts) trains none of them again and reports the same figures for them."""
    import monai_distill.trust.card as card_module

    train = breast["train"]
    calls = []
    real_train = card_module.train_network
    monkeypatch.setattr(card_module, "train_network", lambda *a, **k: calls.append(len(a[1])) or real_train(*a, **k))
    cards = []
    for start in (0, 100):
        idx = torch.cat([torch.nonzero(train.labels == c).flatten()[start : start + 2] for c in range(2)])
        syn = SyntheticSet(train.images[idx] + 0.1, train.labels[idx],
                           meta={"mean": train.mean, "std": train.std, "num_classes": 2})
        calls.clear()
        cards.append(_card(breast, syn, cache_dir=str(tmp_path / "cache"))[1])
        trained = list(calls)
    assert trained == [4]  # the second card trains its target only (4 synthetic images)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3
    for target in ("real_subset", "full_data"):
        assert cards[0]["membership"][target]["loss"]["auc"] == cards[1]["membership"][target]["loss"]["auc"]


def test_members_match_the_nonmembers_class_mix(medmnist_dir):
    """PneumoniaMNIST's shared train split is 10 % normal, its test split 37.5 %: members are drawn with the
    non-members' mix, so that class alone cannot tell them apart."""
    splits = {s: load_dataset("pneumoniamnist", split=s, dataset_dir=str(medmnist_dir)) for s in ("train", "val",
                                                                                                     "test")}
    train, test = splits["train"], splits["test"]
    syn = SyntheticSet(train.images[:4].clone(), torch.tensor([0, 0, 1, 1]), meta={"num_classes": 2})
    card = TrustCard(syn, train, test, splits["val"], "convnet", get_preset("quick", 2), 0, torch.device("cpu"))
    share_in = torch.bincount(train.labels[card.members], minlength=2).double() / len(card.members)
    share_out = torch.bincount(test.labels[card.nonmembers], minlength=2).double() / len(card.nonmembers)
    assert float(torch.bincount(train.labels, minlength=2)[0]) / len(train) < 0.15
    assert torch.allclose(share_in, share_out, atol=0.01) and len(card.members) > 100
    assert set(card.members.tolist()) <= set(card.pool.tolist())


def test_attack_auc_is_chance_when_the_model_saw_neither(breast):
    """Members and non-members from one distribution (two halves of the test split), a model trained on neither."""
    train, test = breast["train"], breast["test"]
    torch.manual_seed(0)
    net = get_network("convnet", 2, 1, 2, (28, 28), width=8)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for _ in range(30):  # a network that learned something, on train images only
        loss = torch.nn.functional.cross_entropy(net(train.images[:128]), train.labels[:128])
        opt.zero_grad()
        loss.backward()
        opt.step()
    perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(1))
    a, b = perm[: len(perm) // 2], perm[len(perm) // 2 :]
    la = per_example_loss(net, test.images[a], test.labels[a], torch.device("cpu"))
    lb = per_example_loss(net, test.images[b], test.labels[b], torch.device("cpu"))
    res = attack(-la, -lb, n_boot=200)
    assert abs(res.auc - 0.5) < 0.1 and res.auc_ci[0] < 0.5 < res.auc_ci[1]
    # The networks' own training images are told apart from the same held-out images.
    seen = per_example_loss(net, train.images[:78], train.labels[:78], torch.device("cpu"))
    assert attack(-seen, -lb, n_boot=0).auc > res.auc


def test_attack_scores_match_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = np.round(rng.normal(0.4, 1, rng.integers(3, 150)), 1)
        b = np.round(rng.normal(0.0, 1, rng.integers(3, 150)), 1)
        y, s = np.r_[np.ones(len(a)), np.zeros(len(b))], np.r_[a, b]
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        res = attack(a, b, n_boot=10)
        assert res.auc == pytest.approx(roc_auc_score(y, s))
        assert res.tpr == pytest.approx(tpr[fpr <= 0.01 + 1e-12].max())
        assert res.auc_ci[0] <= res.auc_ci[1]


def test_nearest_neighbours_leave_one_out_and_cosine():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    nn = nearest_neighbours(x, x, k=1, exclude=torch.arange(3))
    assert nn.indices.flatten().tolist() == [1, 0, 0]
    assert nn.distances[0, 0].item() == pytest.approx(1 / 2**0.5)  # RMS over 2 values
    cos = nearest_neighbours(torch.tensor([[2.0, 0.1]]), x[1:], k=1, metric="cosine")
    assert cos.indices.item() == 0 and cos.distances.item() < 0.01


def test_card_options_are_checked():
    with pytest.raises(OptionError, match=r"unknown key.*'neighbors'"):
        CardOptions.from_dict({"neighbors": 3})
    with pytest.raises(OptionError, match="'quantile'"):
        CardOptions.from_dict({"quantile": 1.5})
    with pytest.raises(OptionError, match=r"'n_attack'.*int"):
        CardOptions.from_dict({"n_attack": "many"})


def test_the_run_writes_a_card_whose_hash_follows_the_settings(medmnist_dir, tmp_path):
    def run(name: str, **kw) -> dict:
        args = {"method": "random", "ipc": 2, "seed": 0, **kw}
        m = DistillWorkflow(dataset="breastmnist", dataset_dir=str(medmnist_dir), output_dir=tmp_path / name,
                            card_options=CHEAP_CARD, **FAST, **args).run()
        assert all((tmp_path / name / f).is_file() for f in CARD_FILES)
        return m["card"]

    first, same = run("a"), run("b")
    assert first["hash"] == same["hash"]
    assert len({first["hash"], run("seed", seed=1)["hash"], run("ipc", ipc=3)["hash"],
                run("method", method="herding")["hash"]}) == 4
    # A coreset is real patients' images: every image is a near-copy, and the attack on its own images is reported.
    card = json.loads((tmp_path / "a" / "card.json").read_text())
    assert card["nearness"]["n_near_copies"] == 4
    assert "synthetic_own" in card["membership"] and "full_data" in card["membership"]
    for target in ("synthetic", "synthetic_own", "real_subset", "full_data"):
        for name in ("loss", "calibrated"):
            res = card["membership"][target][name]
            assert 0 <= res["auc_ci"][0] <= res["auc"] <= res["auc_ci"][1] <= 1
    assert card["reproducibility"]["data"]["splits"]["train"]["n_images"] == 546
    assert len(card["reproducibility"]["data"]["files"]["breastmnist.npz"]) == 64
    md = (tmp_path / "a" / "card.md").read_text()
    assert "4 of 4 synthetic images are near-copies" in md and "does not prove" in md


def test_card_bundle_config_on_an_existing_set(medmnist_dir, tmp_path, repo_root):
    DistillWorkflow(dataset="breastmnist", dataset_dir=str(medmnist_dir), output_dir=tmp_path / "set",
                    method="random", ipc=2, card=False, **FAST).run()
    assert not (tmp_path / "set" / "card.json").exists()
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           str(repo_root / "bundles/medmnist2d_distillation/configs/card.json"),
           "--dataset_dir", str(medmnist_dir), "--synthetic", str(tmp_path / "set" / "synthetic.pt"),
           "--card_options", str(CHEAP_CARD), "--preset_overrides", "{'width': 8, 'eval_epochs': 3}",
           "--progress", "false"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = json.loads((tmp_path / "set" / "card.json").read_text())
    assert card["nearness"]["n_near_copies"] == 4 and card["reproducibility"]["seed"] == 0
    # The same set carded again by the workflow gives the same hash (settings, not time or machine).
    again = CardWorkflow(synthetic=str(tmp_path / "set" / "synthetic.pt"), output_dir=str(tmp_path / "again"),
                         dataset_dir=str(medmnist_dir), card_options=CHEAP_CARD, progress=False, device="cpu",
                         preset_overrides={"width": 8}).run()
    assert again["hash"] == card["hash"]
