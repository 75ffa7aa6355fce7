"""The trainer on the real-tissue cohort: every head learns it, early stopping, checkpoints, predictions, heatmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mil.bags import Bag, BagDirectory, BagError
from mil.heatmap import colormap, draw_heatmap, rank_normalize, save_attention_heatmap
from mil.train import MILTrainer, Predictions, collate_bags, torch_threads, validation_threshold
from mil.workflows import stratified_split

NAMES = ["clam_sb", "clam_mb", "dsmil", "transmil", "abmil", "mean", "max"]


def _trainer(name: str = "abmil", **kw) -> MILTrainer:
    return MILTrainer(name, 128, 2, device="cpu", progress=False, **{"patience": None, **kw})


@pytest.mark.parametrize("name", NAMES)
def test_each_head_learns_the_cohort(name: str, feature_bags: list[Bag]) -> None:
    """Default head sizes, fixed seed, all ten slides: the training AUC must be clearly above chance."""
    trainer = _trainer(name, epochs=12, seed=0)
    result = trainer.fit(feature_bags)
    m = trainer.predict(feature_bags).metrics()
    assert m["auc"] >= 0.9, f"{name}: train AUC {m['auc']:.3f}"
    losses = [h["train_loss"] for h in result.history]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert result.epochs_run == 12 and result.seconds_per_epoch > 0


def test_early_stopping_keeps_the_best_epoch(feature_bags: list[Bag]) -> None:
    """Validation bags with flipped labels get worse as training fits the real ones: the first epoch is best."""
    flipped = [Bag(b.slide_id, 1 - b.label, features=b.features) for b in feature_bags]
    trainer = _trainer(epochs=30, patience=3, seed=0)
    result = trainer.fit(feature_bags, flipped)
    assert result.stopped_early and result.best_epoch == 1 and result.epochs_run == 4
    assert {"val_auc", "val_acc", "val_loss"} <= set(result.history[0])
    one_epoch = _trainer(epochs=1, seed=0)
    one_epoch.fit(feature_bags)
    torch.testing.assert_close(trainer.predict(feature_bags).probs, one_epoch.predict(feature_bags).probs)


def test_optimizer_definition(feature_bags: list[Bag]) -> None:
    """The bundle's default ``optimizer_def`` (Adam with the weight decay, lr filled in) trains exactly as the built-in
    Adam; another optimiser trains to other weights."""
    import functools

    plain = _trainer(epochs=2, seed=0, weight_decay=1e-5)
    plain.fit(feature_bags)
    adam = _trainer(epochs=2, seed=0, weight_decay=1e-5,
                    optimizer_def=functools.partial(torch.optim.Adam, weight_decay=1e-5))
    adam.fit(feature_bags)
    torch.testing.assert_close(adam.predict(feature_bags).probs, plain.predict(feature_bags).probs, rtol=0, atol=0)
    sgd = _trainer(epochs=2, seed=0, optimizer_def=functools.partial(torch.optim.SGD, momentum=0.9))
    assert isinstance(sgd._optimizer(), torch.optim.SGD) and sgd._optimizer().defaults["lr"] == sgd.config.lr
    sgd.fit(feature_bags)
    assert not torch.equal(sgd.predict(feature_bags).probs, plain.predict(feature_bags).probs)


def test_checkpoint_round_trip(tmp_path: Path, feature_bags: list[Bag]) -> None:
    trainer = _trainer("clam_mb", epochs=2, head_options={"hidden_dim": 64, "k_sample": 2})
    trainer.fit(feature_bags)
    path = trainer.save(tmp_path / "model.pt", {"encoder": {"name": "resnetap10"}})
    loaded, extra = MILTrainer.load(path, device="cpu")
    assert extra == {"encoder": {"name": "resnetap10"}} and loaded.head_options == {"hidden_dim": 64, "k_sample": 2}
    torch.testing.assert_close(loaded.predict(feature_bags).probs, trainer.predict(feature_bags).probs)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a monai-distill-mil checkpoint"):
        MILTrainer.load(tmp_path / "other.pt")


def test_validation_threshold_on_hand_made_scores() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    labels = torch.tensor([0, 0, 1, 1])
    assert validation_threshold(probs, labels) == pytest.approx(0.25)  # midpoint of 0.2 and 0.3
    assert validation_threshold(probs, torch.tensor([1, 1, 1, 1])) is None  # one class: no basis to choose
    assert validation_threshold(torch.full((4, 3), 1 / 3), labels) is None  # not binary
    preds = Predictions(["a", "b", "c", "d"], ["real"] * 4, labels, probs, threshold=0.25)
    m = preds.metrics()
    assert m["acc"] == 1.0 and m["balanced_acc"] == 1.0 and m["threshold"] == 0.25
    assert m["acc_at_0.5"] == 0.5 and m["balanced_acc_at_0.5"] == 0.5  # every slide called class 0 at 0.5
    assert preds.table()["pred_at_0.5"].tolist() == [0, 0, 0, 0] and preds.table()["pred"].tolist() == [0, 0, 1, 1]


def test_threshold_is_chosen_on_val_and_kept_in_the_checkpoint(tmp_path: Path, feature_bags: list[Bag]) -> None:
    train, val = stratified_split(feature_bags, 0.4, 0)
    trainer = _trainer(epochs=3, seed=0)
    trainer.fit(train, val)
    kept = trainer.predict(val)
    assert trainer.threshold == validation_threshold(kept.probs, kept.labels) and kept.threshold == trainer.threshold
    assert kept.metrics()["balanced_acc"] >= kept.metrics()["balanced_acc_at_0.5"]
    loaded, _ = MILTrainer.load(trainer.save(tmp_path / "model.pt"), device="cpu")
    assert loaded.threshold == trainer.threshold
    no_val = _trainer(epochs=1, seed=0)
    no_val.fit(train)
    assert no_val.threshold is None and "threshold" not in no_val.predict(val).metrics()


def test_predictions_table_and_metrics(tmp_path: Path, feature_bags: list[Bag]) -> None:
    trainer = _trainer(epochs=2)
    trainer.fit(feature_bags)
    preds = trainer.predict(feature_bags)
    assert set(preds.metrics()) == {"auc", "acc", "balanced_acc", "loss"}
    assert [len(s) for s in preds.instance_scores] == [len(b) for b in feature_bags]
    table = pd.read_csv(preds.to_csv(tmp_path / "predictions.csv"))
    assert list(table.columns) == ["slide_id", "source", "label", "pred", "prob_0", "prob_1"]
    assert table.slide_id.tolist() == [b.slide_id for b in feature_bags]
    assert np.allclose(table.prob_0 + table.prob_1, 1, atol=1e-5)


def test_padded_batches_amp_flag_threads_and_errors(feature_bags: list[Bag]) -> None:
    x, mask, labels = collate_bags(feature_bags[:3])
    assert labels.tolist() == [b.label for b in feature_bags[:3]]
    assert x.shape == (3, max(len(b) for b in feature_bags[:3]), 128) and mask.sum() == sum(map(len, feature_bags[:3]))
    trainer = _trainer("transmil", epochs=1, batch_size=4, amp=True, num_threads=1,
                       head_options={"dim": 32, "heads": 2, "num_landmarks": 8})
    assert trainer.amp is False  # AMP is CUDA-only
    torch.set_num_threads(2)
    trainer.fit(feature_bags)
    assert torch.get_num_threads() == 2
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(BagError, match="labels >= num_classes"):
        trainer.fit([Bag("z", 5, features=torch.randn(3, 128))])
    with pytest.raises(BagError, match="no features"):
        collate_bags([Bag("p", 0, patches=torch.zeros(2, 3, 4, 4))])


def test_stratified_split(feature_bags: list[Bag]) -> None:
    train, val = stratified_split(feature_bags, 0.2, seed=0)
    assert len(val) == 2 and {b.label for b in val} == {0, 1} and len(train) == 8
    assert stratified_split(feature_bags, 0.2, seed=0)[1][0].slide_id == val[0].slide_id
    assert stratified_split(feature_bags, 0.0, seed=0)[1] == []
    assert stratified_split(feature_bags[:3], 0.5, seed=0)[1] == []  # one class cannot spare a bag


def test_heatmap_over_the_slide(tmp_path: Path, real_bags: BagDirectory, feature_bags: list[Bag]) -> None:
    trainer = _trainer(epochs=2)
    trainer.fit(feature_bags)
    bag = real_bags[0]
    scores = trainer.predict([feature_bags[0]]).instance_scores[0]
    path = save_attention_heatmap(bag, scores, tmp_path / "heatmaps" / "slide.png", size=256)
    image = Image.open(path)
    assert image.width == 256 and image.height > 192  # slide at 256 x 192 plus the colour bar
    with pytest.raises(BagError, match="heatmaps need a real bag"):
        save_attention_heatmap(Bag("syn", 1, patches=torch.zeros(2, 3, 4, 4), source="synthetic"), [1, 2], path)


def test_draw_heatmap_colours_only_patches() -> None:
    background = np.full((40, 40, 3), 200, dtype=np.uint8)
    image = np.asarray(draw_heatmap(background, (400, 400), np.array([[0, 0], [200, 200]]), 100, [0.0, 1.0],
                                    alpha=1.0, legend=False))
    assert image.shape == (40, 40, 3)
    assert (image[30, 5] == 200).all()  # no patch there
    assert image[5, 5, 2] > image[5, 5, 0] and image[25, 25, 0] > image[25, 25, 2]  # low = blue, high = red
    assert rank_normalize([3.0, 1.0, 2.0]).tolist() == [1.0, 0.0, 0.5] and rank_normalize([7.0]).tolist() == [1.0]


def test_draw_heatmap_blends_and_adds_a_colour_bar() -> None:
    background = np.full((120, 240, 3), 200, dtype=np.uint8)
    coords, scores = np.array([[0, 0], [100, 0], [50, 0]]), [0.0, 1.0, 0.5]
    plain = np.asarray(draw_heatmap(background, (240, 120), coords, 100, scores, alpha=0.5, legend=False))
    # Half-way between the background grey and the colour of each patch's rank; patches 1 and 3 overlap on
    # x 50..100 and 3 and 2 on x 100..150, where the ranks are averaged.
    for x, rank in ((25, 0.0), (75, 0.25), (125, 0.75), (175, 1.0)):
        expected = 0.5 * 200 + 0.5 * colormap(np.array([rank]))[0].astype(float)
        np.testing.assert_allclose(plain[50, x], expected, atol=1)
    assert (plain[110, :] == 200).all() and (plain[:, 210] == 200).all()  # outside every patch
    with_bar = np.asarray(draw_heatmap(background, (240, 120), coords, 100, scores, alpha=0.5))
    assert with_bar.shape[1] == 240 and with_bar.shape[0] > 120
    np.testing.assert_array_equal(with_bar[:120], plain)  # the image itself is not resampled
    strip = with_bar[120:]
    assert strip.std() > 0 and (strip < 100).any()  # colour bar and dark label text
    assert colormap(np.array([0.0]))[0, 2] > colormap(np.array([0.0]))[0, 0]  # low end is blue
    assert colormap(np.array([1.0]))[0, 0] > colormap(np.array([1.0]))[0, 2]  # high end is red


def test_save_attention_heatmap_without_slide_or_thumbnail(tmp_path: Path) -> None:
    """No readable slide: the patches are drawn on white, at ``size`` along the longer side, plus the colour bar."""
    coords = torch.tensor([[0, 0], [400, 0], [800, 200]])
    bag = Bag("s", 0, features=torch.randn(3, 8), coords=coords,
              meta={"level0_size": [1000, 500], "footprint": 200, "slide_path": str(tmp_path / "missing.tiff")})
    path = save_attention_heatmap(bag, torch.tensor([0.1, 0.2, 0.9]), tmp_path / "h" / "s.png", size=300)
    assert path == tmp_path / "h" / "s.png" and [p.name for p in path.parent.iterdir()] == ["s.png"]
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width == 300 and img.height > 150
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 0 and (pixels[:150] == 255).all(axis=2).mean() > 0.5  # mostly white slide area


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_amp_training(name: str, feature_bags: list[Bag]) -> None:
    trainer = MILTrainer(name, 128, 2, device="cuda", amp=True, epochs=3, patience=None, progress=False)
    assert trainer.amp
    result = trainer.fit(feature_bags)
    assert np.isfinite([h["train_loss"] for h in result.history]).all()
    assert np.isfinite(trainer.predict(feature_bags).probs.numpy()).all()


def test_attention_finds_the_positive_tissue(feature_bags: list[Bag], real_bags: BagDirectory, mil_cohort) -> None:
    """ABMIL trained on the cohort attends to the patches of the minority tissue that makes a slide positive
    (the cohort's annotation masks say which patches those are)."""
    root, _ = mil_cohort
    trainer = _trainer("abmil", epochs=20, seed=0)
    trainer.fit(feature_bags)
    preds = trainer.predict(feature_bags)
    checked = 0
    for bag, scores in zip(real_bags, preds.instance_scores):
        if bag.label != 1:
            continue
        ann = np.asarray(Image.open(root / "annotations" / f"{bag.slide_id}.png"))  # 1/4 of level 0
        side = bag.meta["footprint"] // 4
        minority = np.array([(ann[y // 4 : y // 4 + side, x // 4 : x // 4 + side] == 2).mean() > 0.5
                             for x, y in bag.coords.tolist()])
        if minority.any() and (~minority).any():
            assert scores[minority].mean() > 2 * scores[~minority].mean(), bag.slide_id
            checked += 1
    assert checked >= 3
