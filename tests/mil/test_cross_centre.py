"""Cross-centre transfer (seed 003 Table 5) end to end on a tiny two-centre cohort of real tissue: two centres built
from disjoint tissue in different stains, tiled, bagged, the target's training slides distilled with their
annotation masks, and the ``cross_centre.json`` bundle run as users run it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mil.bags import BagDirectory, load_bag
from mil.cross_centre import CrossCentreWorkflow, PatchSet, transfer_summary
from mil.real_bags import make_real_bags
from mil.synthetic_bags import SyntheticBagsWorkflow
from mil.train import MILTrainer
from monai_distill.checks import OptionError
from monai_distill.data import SyntheticSet
from tests.bundles.helpers import run_bundle
from wsi.cohort import DEFAULT_CENTRES, build_centres, load_pools
from wsi.workflows import TilingWorkflow

CONFIG = "bundles/mil_slide_classification/configs/cross_centre.json"


@pytest.fixture(scope="module")
def centres(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """Two centres of 6 slides (4 train / 2 test each), tiled at 32 px level 0, real bags per split, and the target
    centre's training slides distilled (Histo-DD, 1 iteration, ipc 2 per patch class) with its annotation masks."""
    root = tmp_path_factory.mktemp("centres")
    build_centres(root / "cohorts", n_slides=6, size=(512, 384), pools=load_pools(shared_data))
    for centre in ("centre_a", "centre_b"):
        TilingWorkflow(root / "cohorts" / centre / "cohort.csv", root / centre / "tiling", patch_size=32, level=0,
                       progress=False).run()
        for split in ("train", "test"):
            make_real_bags(root / centre / "tiling", root / centre / "real_bags" / split, split=split, progress=False)
    SyntheticBagsWorkflow(root / "centre_b" / "tiling", root / "centre_b" / "synthetic", ipc=2, split="train",
                          annotations=root / "cohorts" / "centre_b" / "annotations", progress=False,
                          preset_overrides={"width": 8}, pool_patches=16, storage="uint8",
                          method_options={"iterations": 1, "outer_loop": 2, "pool_size": 1, "pool_epochs": 1}).run()
    return root


def test_centres_share_no_tissue_and_differ_in_stain(centres: Path) -> None:
    record = json.loads((centres / "cohorts" / "centres.json").read_text())
    assert [c["name"] for c in record["centres"]] == [c.name for c in DEFAULT_CENTRES]
    pools = load_pools()
    a, b = (pools["tcga"].restrict(c.region, c.stain) for c in DEFAULT_CENTRES)
    for ca, cb in zip(a.corners, b.corners):  # pieces of A end before B's start
        if len(ca) and len(cb):
            assert ca[:, 0].max() + a.piece_size <= cb[:, 0].min()
    rng = np.random.default_rng(0)
    mean_a = np.mean([a.sample(rng).mean(axis=(0, 1)) for _ in range(30)], axis=0)
    mean_b = np.mean([b.sample(rng).mean(axis=(0, 1)) for _ in range(30)], axis=0)
    assert np.abs(mean_a - mean_b).max() > 5  # another stain: the mean colour moves by several grey levels
    with pytest.raises(ValueError, match="region"):
        pools["tcga"].restrict((0.5, 0.5))


def test_patch_sets_take_classes_from_masks_and_synthetic_meta(centres: Path) -> None:
    real = PatchSet.from_real_bags(BagDirectory(centres / "centre_b" / "real_bags" / "train"),
                                   centres / "cohorts" / "centre_b" / "annotations", "target")
    syn = PatchSet.from_synthetic_bags(BagDirectory(centres / "centre_b" / "synthetic"), "synthetic")
    assert set(real.labels.tolist()) == {0, 1} and set(syn.labels.tolist()) == {0, 1}  # majority and minority tissue
    assert real.images.dtype == torch.float32 and float(real.images.min()) >= 0 and float(real.images.max()) <= 1
    assert len(syn.labels) < len(real.labels) and syn.megabytes < real.megabytes
    with pytest.raises(FileNotFoundError, match="annotation mask"):
        PatchSet.from_real_bags(BagDirectory(centres / "centre_b" / "real_bags" / "train"), centres, "target")


def test_cross_centre_bundle_runs_end_to_end(centres: Path, tmp_path: Path) -> None:
    out = tmp_path / "transfer"
    settings = {
        "source_bags": centres / "centre_a" / "real_bags" / "train",
        "target_bags": centres / "centre_b" / "real_bags" / "train",
        "target_synthetic_bags": centres / "centre_b" / "synthetic",
        "test_bags": centres / "centre_b" / "real_bags" / "test",
        "source_annotations": centres / "cohorts" / "centre_a" / "annotations",
        "target_annotations": centres / "cohorts" / "centre_b" / "annotations",
        "output_dir": out, "mil_options": "\"{'epochs': 3, 'val_fraction': 0, 'patience': 0}\"",
        "patch_options": "\"{'width': 8}\"", "source_epochs": 2, "finetune_epochs": 2, "device": "cpu",
        "progress": False,
    }
    run_bundle(CONFIG, **settings)
    metrics = json.loads((out / "metrics.json").read_text())
    table = pd.read_csv(out / "results.csv")
    assert sorted(zip(table.level, table.arm)) == sorted(
        (lvl, arm) for lvl in ("patch", "slide") for arm in ("none", "synthetic", "full"))
    tuned = table[table.arm != "none"].set_index(["level", "arm"])
    assert (tuned.finetune_seconds > 0).all() and (tuned.epochs > 0).all()
    for level in ("patch", "slide"):  # the synthetic data is what saves bytes
        assert tuned.loc[(level, "synthetic"), "megabytes"] < tuned.loc[(level, "full"), "megabytes"]
        assert metrics["summary"][level]["bytes_ratio"] < 1
    assert table[table.level == "patch"].auc.between(0, 1).all()
    # the fine-tuned heads started from the source head: its checkpoint is recorded, and the weights moved from it
    syn = json.loads((out / "slide" / "synthetic" / "metrics.json").read_text())
    assert syn["init_checkpoint"] == str(out / "slide" / "none" / "model.pt")
    source, _ = MILTrainer.load(out / "slide" / "none" / "model.pt")
    tuned_head, _ = MILTrainer.load(out / "slide" / "synthetic" / "model.pt")
    src, dst = source.model.state_dict(), tuned_head.model.state_dict()
    assert torch.equal(src["feature_mean"], dst["feature_mean"])  # the source model's standardisation is kept
    assert any(not torch.equal(src[k], dst[k]) for k in src if k.startswith("head."))
    # a rerun with the same settings reads every arm back instead of training again
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/*/model.pt")}
    run_bundle(CONFIG, **settings)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/model.pt")} == before


def test_fine_tuning_needs_a_matching_checkpoint(centres: Path, tmp_path: Path) -> None:
    bad = tmp_path / "other.pt"
    MILTrainer("abmil", 8, 2).save(bad)
    trainer = MILTrainer("clam_sb", 8, 2)
    with pytest.raises(ValueError, match="same head"):
        trainer.init_from(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        trainer.init_from(tmp_path / "missing.pt")
    bags = {k: centres / "centre_b" / "real_bags" / "train" for k in ("source_bags", "target_bags",
                                                                       "target_synthetic_bags", "test_bags")}
    with pytest.raises(OptionError, match="--progress must be a boolean"):  # "maybe" is not read as True
        CrossCentreWorkflow(output_dir=tmp_path / "x", levels="slide", progress="maybe", **bags)


def test_transfer_summary_ratios() -> None:
    rows = [{"level": "slide", "arm": "none", "auc": 0.6, "balanced_acc": 0.5, "megabytes": float("nan"),
             "finetune_seconds": 0.0},
            {"level": "slide", "arm": "synthetic", "auc": 0.9, "balanced_acc": 0.8, "megabytes": 1.0,
             "finetune_seconds": 1.0},
            {"level": "slide", "arm": "full", "auc": 0.95, "balanced_acc": 0.9, "megabytes": 20.0,
             "finetune_seconds": 40.0}]
    s = transfer_summary(rows)["slide"]
    assert s["gain_ratio"] == pytest.approx(0.3 / 0.35) and s["bytes_ratio"] == 0.05 and s["time_ratio"] == 0.025
    assert s["full_gain_balanced_acc"] == pytest.approx(0.4) and s["synthetic_gain_balanced_acc"] == pytest.approx(0.3)


def test_png_of_uint8_bags_shows_the_synthetic_patches(centres: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A bag stored as uint8 (0..255) is drawn in the cohort's units like the real rows, not as blank white."""
    out = centres / "centre_b" / "synthetic"
    bag = load_bag(next((out / "bags").glob("*.pt")))
    assert bag.patches.dtype == torch.uint8
    cohort = json.loads((out / "cohort.json").read_text())
    drawn: list[SyntheticSet] = []
    monkeypatch.setattr(SyntheticSet, "to_png", lambda self, path, **kw: drawn.append(self))
    wf = SyntheticBagsWorkflow(centres / "centre_b" / "tiling", tmp_path, ipc=2, progress=False)
    wf._png(bag, BagDirectory(centres / "centre_b" / "real_bags" / "train")[0], cohort)
    mean = torch.tensor(cohort["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cohort["std"]).view(1, -1, 1, 1)
    shown = drawn[0].images[: len(bag)] * std + mean  # back to display units
    torch.testing.assert_close(shown, bag.pixels(), atol=1e-5, rtol=0)
