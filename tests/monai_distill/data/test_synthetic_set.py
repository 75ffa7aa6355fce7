"""SyntheticSet: file round trip, atomic save, validation on load, and the PNG grid on real 2D/3D images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_distill.data import ClassBalancedSampler, DataError, RealDataset, SyntheticSet


def _meta(real: RealDataset, ipc: int) -> dict:
    return {
        "method": "random",
        "dataset": real.name,
        "ipc": ipc,
        "seed": 0,
        "num_classes": real.num_classes,
        "class_names": real.class_names,
        "mean": real.mean,
        "std": real.std,
    }


def _from_real(real: RealDataset, ipc: int, seed: int = 0) -> tuple[SyntheticSet, torch.Tensor]:
    """A set of real images (ipc per class, class after class) and the dataset indices they came from."""
    idx = ClassBalancedSampler(real).balanced_indices(ipc, torch.Generator().manual_seed(seed))
    synth = SyntheticSet(images=real.images[idx].clone(), labels=real.labels[idx].clone(), meta=_meta(real, ipc))
    return synth, idx


@pytest.mark.parametrize("soft", [False, True])
def test_roundtrip(tmp_path: Path, breast_train: RealDataset, soft: bool) -> None:
    synth, _ = _from_real(breast_train, ipc=3)
    if soft:
        # Probabilities that still favour each image's class, as learned soft labels (DATM-style) usually do.
        noise = 0.1 * torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
        logits = 2.0 * torch.nn.functional.one_hot(synth.labels, 2).float() + noise
        synth = SyntheticSet(images=synth.images, labels=logits.softmax(dim=1), meta=synth.meta)
    synth.lr = 0.0123
    synth.meta["config_hash"] = "abc123"
    path = synth.save(tmp_path / "synthetic.pt")
    back = SyntheticSet.load(path)
    assert torch.equal(back.images, synth.images)
    assert torch.equal(back.labels, synth.labels) and back.labels.dtype == synth.labels.dtype
    assert back.soft is soft
    assert torch.equal(back.hard_labels, torch.tensor([0, 0, 0, 1, 1, 1]))
    assert back.lr == pytest.approx(0.0123)
    assert back.meta == synth.meta
    assert back.ipc == 3 and back.num_classes == 2
    # Only the file itself is left in the folder: the temporary file was renamed onto it.
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic.pt"]


def test_ipc_is_the_budget_when_soft_labels_change_class(breast_train: RealDataset) -> None:
    # DATM-style drift seen on AdrenalMNIST3D ipc 10: every learned label ends up favouring class 0.
    synth, _ = _from_real(breast_train, ipc=3)
    drifted = torch.tensor([[0.7, 0.3]]).repeat(6, 1)
    syn = SyntheticSet(images=synth.images, labels=drifted, meta=synth.meta)
    assert syn.hard_labels.tolist() == [0] * 6
    assert syn.ipc == 3
    no_meta = SyntheticSet(images=synth.images, labels=drifted, meta={"num_classes": 2})
    assert no_meta.ipc == 6


def test_soft_labels_must_be_probabilities(breast_train: RealDataset) -> None:
    synth, _ = _from_real(breast_train, ipc=2)
    with pytest.raises(DataError, match="class probabilities"):
        SyntheticSet(images=synth.images, labels=torch.randn(4, 2), meta=synth.meta)


def test_roundtrip_without_lr(tmp_path: Path, adrenal_train: RealDataset) -> None:
    synth, _ = _from_real(adrenal_train, ipc=1)
    back = SyntheticSet.load(synth.save(tmp_path / "s.pt"))
    assert back.lr is None and back.spatial_dims == 3 and torch.equal(back.images, synth.images)


def test_failed_save_leaves_no_partial_file(tmp_path: Path, breast_train: RealDataset, monkeypatch) -> None:
    synth, _ = _from_real(breast_train, ipc=2)
    target = tmp_path / "synthetic.pt"
    synth.save(target)
    before = target.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        synth.save(target)
    monkeypatch.undo()
    # The old file is intact and no temporary file is left behind.
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic.pt"]


def test_save_into_path_under_a_file(tmp_path: Path, breast_train: RealDataset) -> None:
    synth, _ = _from_real(breast_train, ipc=1)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(OSError):
        synth.save(blocker / "synthetic.pt")
    assert blocker.read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["not_a_dir"]


def test_load_missing_file(tmp_path: Path) -> None:
    # A missing file is a FileNotFoundError (as for the dataset loaders), not a DataError.
    with pytest.raises(FileNotFoundError, match=r"nothere\.pt"):
        SyntheticSet.load(tmp_path / "nothere.pt")


def test_load_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x00\x01 definitely not a torch file" * 10)
    with pytest.raises(DataError, match="not a readable SyntheticSet file") as err:
        SyntheticSet.load(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("images", "labels", "expected"),
    [
        (torch.zeros(4, 28, 28), torch.tensor([0, 0, 1, 1]), r"'images' must be a tensor \(N, C, H, W\)"),
        (torch.zeros(4, 1, 28, 28), torch.tensor([0, 1, 1]), "4 images but 3 labels"),
        (torch.zeros(4, 1, 28, 28), torch.tensor([0.0, 0.0, 1.0, 1.0]), "hard 'labels' must be integer"),
    ],
)
def test_load_wrong_shapes(tmp_path: Path, images: torch.Tensor, labels: torch.Tensor, expected: str) -> None:
    path = tmp_path / "bad.pt"
    torch.save({"format_version": 1, "images": images, "labels": labels, "lr": None, "meta": {}}, path)
    with pytest.raises(DataError, match=expected) as err:
        SyntheticSet.load(path)
    assert str(path) in str(err.value)


def test_load_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    torch.save({"imgs": torch.zeros(1, 1, 4, 4)}, path)
    with pytest.raises(DataError, match=r"missing keys \['images', 'labels'\]; found \['imgs'\]"):
        SyntheticSet.load(path)


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def test_to_png_2d(tmp_path: Path, medmnist_dir: Path, breast_train: RealDataset) -> None:
    ipc = 3
    synth, idx = _from_real(breast_train, ipc)
    # Denormalising with the recorded mean/std gives back the stored uint8 pixels / 255, all in [0, 1].
    raw = np.load(medmnist_dir / "breastmnist.npz")["train_images"][idx.numpy()] / 255.0
    den = synth.denormalised()
    assert float(den.min()) >= 0.0 and float(den.max()) <= 1.0
    np.testing.assert_allclose(den[:, 0].numpy(), raw, atol=1e-5)

    png = _read_png(synth.to_png(tmp_path / "grid.png", tile_px=56, row_names=False))
    # 2 class rows x ipc columns of 28 px tiles with a 2 px gap, upscaled x2 to reach tile_px.
    scale, tile, gap = 2, 28, 2
    assert png.shape == (((tile + gap) * 2 + gap) * scale, ((tile + gap) * ipc + gap) * scale, 3)
    grid = png[::scale, ::scale, 0]
    for row in range(2):  # classes are rows, in class order
        for col in range(ipc):
            y0, x0 = gap + row * (tile + gap), gap + col * (tile + gap)
            expected = np.round(raw[row * ipc + col] * 255)
            np.testing.assert_allclose(grid[y0 : y0 + tile, x0 : x0 + tile], expected, atol=1)


def test_to_png_3d(tmp_path: Path, medmnist_dir: Path, adrenal_train: RealDataset) -> None:
    ipc = 2
    synth, idx = _from_real(adrenal_train, ipc)
    den = synth.denormalised()
    assert float(den.min()) >= 0.0 and float(den.max()) <= 1.0
    raw = np.load(medmnist_dir / "adrenalmnist3d.npz")["train_images"][idx.numpy()] / 255.0
    np.testing.assert_allclose(den[:, 0].numpy(), raw, atol=1e-5)

    png = _read_png(synth.to_png(tmp_path / "grid3d.png", row_names=False))
    # A 3D tile is its three middle slices (28 x 28 each) side by side with 1 px between them: 28 x 86.
    tile_h, tile_w, gap = 28, 3 * 28 + 2, 2
    scale = 3  # ceil(64 / 28): the default tile_px of 64
    assert png.shape == (((tile_h + gap) * 2 + gap) * scale, ((tile_w + gap) * ipc + gap) * scale, 3)
    grid = png[::scale, ::scale, 0]
    for row in range(2):
        for col in range(ipc):
            vol = raw[row * ipc + col]
            y0, x0 = gap + row * (tile_h + gap), gap + col * (tile_w + gap)
            views = [vol[14], vol[:, 14], vol[:, :, 14]]
            for v, view in enumerate(views):
                left = x0 + v * 29
                np.testing.assert_allclose(grid[y0 : y0 + 28, left : left + 28], np.round(view * 255), atol=1)


def test_to_png_without_stats_rescales(tmp_path: Path) -> None:
    # No mean/std in meta: each image is stretched to [0, 1] so that it is still visible.
    synth = SyntheticSet(images=torch.randn(4, 3, 8, 8) * 50, labels=torch.tensor([0, 1, 2, 2]))
    den = synth.denormalised()
    assert float(den.min()) == 0.0 and float(den.max()) == 1.0
    png = _read_png(synth.to_png(tmp_path / "rgb.png", tile_px=8, row_names=False))
    assert png.shape == ((8 + 2) * 3 + 2, (8 + 2) * 2 + 2, 3)


def test_to_png_names_the_class_rows(tmp_path: Path, breast_train: RealDataset) -> None:
    synth, _ = _from_real(breast_train, 2)
    plain = _read_png(synth.to_png(tmp_path / "plain.png", row_names=False))
    named = _read_png(synth.to_png(tmp_path / "named.png"))
    assert named.shape[0] == plain.shape[0] and named.shape[1] > plain.shape[1]
    left = named[:, : named.shape[1] - plain.shape[1]]
    assert (left < 128).any()  # dark text pixels in the white name column
    np.testing.assert_array_equal(named[:, left.shape[1] :], plain)  # the names only add a column
    # One name per class row, each in its own row: the dark text rows form two separate blocks.
    dark_rows = np.flatnonzero((left < 128).any(axis=(1, 2)))
    assert dark_rows.size and np.count_nonzero(np.diff(dark_rows) > 1) == 1
    assert {p.name for p in tmp_path.iterdir()} == {"named.png", "plain.png"}  # no temporary file left behind
