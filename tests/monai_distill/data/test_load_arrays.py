"""load_arrays on user .npz files written in tmp_path from the real BreastMNIST (2D) and AdrenalMNIST3D arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from monai_distill.data import DataError, RealDataset, infer_spatial_dims, load_arrays


@pytest.fixture(scope="module")
def adrenal_arrays(medmnist_dir: Path) -> dict[str, np.ndarray]:
    with np.load(medmnist_dir / "adrenalmnist3d.npz") as npz:
        return {k: npz[k] for k in npz.files}


def _write(path: Path, arrays: dict[str, np.ndarray], **replace: np.ndarray) -> Path:
    np.savez(path, **{**arrays, **replace})
    return path


def test_2d_uint8_matches_medmnist_loader(tmp_path: Path, breast_arrays: dict, breast_train: RealDataset) -> None:
    path = _write(tmp_path / "my_breast.npz", breast_arrays)
    ds = load_arrays(path)
    assert ds.images.shape == (546, 1, 28, 28) and ds.spatial_dims == 2
    # Same pixels, same rule: the result is exactly what the MedMNIST loader gives for the official file.
    assert torch.equal(ds.images, breast_train.images)
    assert torch.equal(ds.labels, breast_train.labels)
    assert ds.mean == breast_train.mean and ds.std == breast_train.std
    assert ds.num_classes == 2 and ds.class_names == ["0", "1"] and ds.task == "binary-class"
    assert ds.name == "my_breast" and ds.source == str(path)
    test = load_arrays(path, "test", name="breast", class_names=["malignant", "benign"])
    assert len(test) == 156 and test.name == "breast" and test.class_names == ["malignant", "benign"]
    assert test.mean == ds.mean  # other splits use the train statistics


def test_3d_uint8(tmp_path: Path, adrenal_arrays: dict, adrenal_train: RealDataset) -> None:
    path = _write(tmp_path / "adrenal.npz", adrenal_arrays)
    ds = load_arrays(path, "val")
    assert ds.images.shape == (98, 1, 28, 28, 28) and ds.spatial_dims == 3
    assert ds.mean == pytest.approx(adrenal_train.mean) and ds.std == pytest.approx(adrenal_train.std)
    assert ds.labels.tolist() == adrenal_arrays["val_labels"].reshape(-1).tolist()


def test_float_channel_first_needs_spatial_dims(tmp_path: Path, breast_arrays: dict, breast_train) -> None:
    # Float images in [0, 1], channel-first (N, 1, H, W): they look like (N, D, H, W) volumes unless told.
    floats = {k: (v[:, None].astype(np.float32) / 255 if k.endswith("images") else v) for k, v in breast_arrays.items()}
    path = _write(tmp_path / "floats.npz", floats)
    ds = load_arrays(path, spatial_dims=2)
    assert ds.images.shape == (546, 1, 28, 28)
    torch.testing.assert_close(ds.images, breast_train.images, atol=1e-5, rtol=0)
    guessed = load_arrays(path)
    assert guessed.spatial_dims == 3 and guessed.images.shape == (546, 1, 1, 28, 28)


def test_rgb_channel_last_is_2d(tmp_path: Path, breast_arrays: dict) -> None:
    rgb = {k: (np.repeat(v[..., None], 3, axis=-1) if k.endswith("images") else v) for k, v in breast_arrays.items()}
    ds = load_arrays(_write(tmp_path / "rgb.npz", rgb))
    assert ds.images.shape == (546, 3, 28, 28) and len(ds.mean) == 3
    assert torch.equal(ds.images[:, 0], ds.images[:, 2])


def test_classes_come_from_the_train_split(tmp_path: Path, breast_arrays: dict) -> None:
    # A label that only the test split holds is a typo, not a class: it names the split and the value (issue 13).
    test_labels = breast_arrays["test_labels"].copy()
    test_labels[0] = 7
    path = _write(tmp_path / "typo.npz", breast_arrays, test_labels=test_labels)
    for split in ("train", "test"):
        with pytest.raises(DataError, match=r"test labels \(test_labels\) contain \[7\], but the train split has 2"):
            load_arrays(path, split)
    # uint8 labels of 255 (a "missing" marker) do not make 256 classes.
    train_labels = breast_arrays["train_labels"].astype(np.uint8)
    train_labels[3] = 255
    with pytest.raises(DataError, match=r"255 in uint8 labels"):
        load_arrays(_write(tmp_path / "u8.npz", breast_arrays, train_labels=train_labels))
    three = {k: v.copy() for k, v in breast_arrays.items()}
    for split in ("train", "val", "test"):
        three[f"{split}_labels"][:5] = 2
    assert load_arrays(_write(tmp_path / "three.npz", three), "test").num_classes == 3
    assert load_arrays(tmp_path / "three.npz").task == "multi-class"


def test_labels_out_of_range(tmp_path: Path, breast_arrays: dict) -> None:
    labels = breast_arrays["train_labels"].copy()
    labels[10] = 7
    path = _write(tmp_path / "bad_labels.npz", breast_arrays, train_labels=labels)
    with pytest.raises(DataError) as err:
        load_arrays(path, num_classes=2)
    msg = str(err.value)
    assert str(path) in msg and "train labels" in msg and "[7]" in msg
    with pytest.raises(DataError, match=r"\[7\]"):
        load_arrays(path, class_names=["a", "b"])


def test_fractional_labels(tmp_path: Path, breast_arrays: dict) -> None:
    labels = breast_arrays["val_labels"].astype(np.float32)
    labels[3] = 0.5
    path = _write(tmp_path / "frac.npz", breast_arrays, val_labels=labels)
    with pytest.raises(DataError, match=r"val_labels must be whole numbers.*0\.5"):
        load_arrays(path, "val")


def test_bad_arguments_and_files(tmp_path: Path, breast_arrays: dict) -> None:
    path = _write(tmp_path / "ok.npz", breast_arrays)
    with pytest.raises(ValueError, match="2 class_names given for num_classes=3"):
        load_arrays(path, num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        load_arrays(path, spatial_dims=4)
    with pytest.raises(FileNotFoundError, match=r"missing\.npz"):
        load_arrays(tmp_path / "missing.npz")
    no_val = {k: v for k, v in breast_arrays.items() if not k.startswith("val")}
    with pytest.raises(DataError, match="lacks the keys"):
        load_arrays(_write(tmp_path / "no_val.npz", no_val), "val")
    nan_images = breast_arrays["train_images"].astype(np.float32)
    nan_images[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        load_arrays(_write(tmp_path / "nan.npz", breast_arrays, train_images=nan_images))


def test_infer_spatial_dims() -> None:
    assert infer_spatial_dims((10, 28, 28)) == 2
    assert infer_spatial_dims((10, 28, 28, 3)) == 2
    assert infer_spatial_dims((10, 28, 28, 28)) == 3
    assert infer_spatial_dims((10, 1, 28, 28, 28)) == 3
    with pytest.raises(DataError, match="pass spatial_dims"):
        infer_spatial_dims((10, 28))
