"""load_medmnist on the real shared files, and every bad input it must explain."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_distill.data import ClassBalancedSampler, DataError, load_medmnist, medmnist_info


def _check_split(ds, flag: str, split: str, size: int, spatial_dims: int) -> None:
    info = medmnist_info(flag)
    assert ds.images.shape == (info["n_samples"][split], info["n_channels"], *(size,) * spatial_dims)
    # A NaN or inf anywhere makes the sum non-finite; unlike isfinite(x).all() it needs no 64^3-sized mask.
    assert ds.images.dtype == torch.float32 and torch.isfinite(ds.images.sum())
    assert ds.labels.dtype == torch.long and ds.labels.shape == (len(ds),)
    assert int(ds.labels.min()) >= 0 and int(ds.labels.max()) < ds.num_classes
    assert ds.class_names == [info["label"][str(i)] for i in range(len(info["label"]))]
    assert ds.num_classes == len(info["label"]) and ds.task == info["task"]
    assert ds.spatial_dims == spatial_dims and ds.in_channels == info["n_channels"]
    assert sum(ds.class_counts()) == len(ds)


def test_breastmnist_splits(medmnist_dir: Path, breast_train) -> None:
    _check_split(breast_train, "breastmnist", "train", 28, 2)
    # The train split is normalised with its own statistics, which the dataset records.
    assert abs(float(breast_train.images.mean())) < 1e-4
    assert float(breast_train.images.std()) == pytest.approx(1.0, abs=1e-3)
    raw = np.load(medmnist_dir / "breastmnist.npz")["train_images"] / 255.0
    assert breast_train.mean[0] == pytest.approx(raw.mean(), rel=1e-5)
    assert breast_train.std[0] == pytest.approx(raw.std(ddof=1), rel=1e-5)
    for split in ("val", "test"):
        ds = load_medmnist("breastmnist", split, medmnist_dir)
        _check_split(ds, "breastmnist", split, 28, 2)
        assert ds.mean == breast_train.mean and ds.std == breast_train.std


def test_pneumoniamnist_warns_about_unofficial_train_split(medmnist_dir: Path) -> None:
    official = medmnist_info("pneumoniamnist")["n_samples"]["train"]
    with pytest.warns(UserWarning, match=r"train split has 3882 images but medmnist\.INFO says") as record:
        ds = load_medmnist("pneumoniamnist", "train", medmnist_dir)
    assert str(official) in str(record[0].message)
    assert len(ds) == 3882 and ds.images.shape[1:] == (1, 28, 28)
    assert ds.class_counts() == [388, 3494]  # per PROVENANCE.md: all pneumonia, 388 of the normal images


@pytest.mark.parametrize("size", [28, 64])
def test_adrenalmnist3d(medmnist_dir: Path, size: int) -> None:
    train = load_medmnist("adrenalmnist3d", "train", medmnist_dir, size=size)
    _check_split(train, "adrenalmnist3d", "train", size, 3)
    assert train.images.shape[1] == 1  # (N, C, D, H, W): the channel dim is added to MedMNIST's (N, D, H, W)
    assert abs(float(train.images.mean())) < 1e-4
    assert float(train.images.std()) == pytest.approx(1.0, abs=1e-3)
    assert train.extra["size"] == size
    del train
    val = load_medmnist("adrenalmnist3d", "val", medmnist_dir, size=size)
    _check_split(val, "adrenalmnist3d", "val", size, 3)


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_file_names_file_directory_and_flags_found(medmnist_dir: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_medmnist("pathmnist", "train", medmnist_dir)
    msg = str(err.value)
    assert "'pathmnist.npz'" in msg and str(medmnist_dir.resolve()) in msg
    assert "breastmnist" in msg and "adrenalmnist3d_64" in msg
    assert "download=True" in msg  # says how to get it


def test_missing_size_variant(medmnist_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"breastmnist_64\.npz"):
        load_medmnist("breastmnist", "train", medmnist_dir, size=64)


def test_unknown_flag_lists_valid_flags(medmnist_dir: Path) -> None:
    with pytest.raises(KeyError) as err:
        load_medmnist("breastmnistt", "train", medmnist_dir)
    msg = str(err.value)
    assert "breastmnistt" in msg and "pathmnist" in msg and "organmnist3d" in msg


def test_unsupported_size(medmnist_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"\(28, 64, 128, 224\).*got 32"):
        load_medmnist("breastmnist", "train", medmnist_dir, size=32)


def test_unknown_split(medmnist_dir: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        load_medmnist("breastmnist", "validation", medmnist_dir)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "corrupt_member"])
def test_corrupt_npz(tmp_path: Path, medmnist_dir: Path, damage: str) -> None:
    raw = (medmnist_dir / "breastmnist.npz").read_bytes()
    if damage == "garbage":
        data = b"this is not an npz archive\n" * 50
    elif damage == "truncated":
        data = raw[: len(raw) // 2]
    else:
        # Valid zip directory, damaged compressed bytes inside the first member.
        buf = bytearray(raw)
        buf[1000:3000] = b"x" * 2000
        data = bytes(buf)
    (tmp_path / "breastmnist.npz").write_bytes(data)
    with pytest.raises(DataError, match=r"not a readable \.npz") as err:
        load_medmnist("breastmnist", "train", tmp_path)
    assert str(tmp_path / "breastmnist.npz") in str(err.value)


def test_wrong_keys(tmp_path: Path, breast_arrays: dict) -> None:
    np.savez(tmp_path / "breastmnist.npz", images=breast_arrays["train_images"], labels=breast_arrays["train_labels"])
    with pytest.raises(DataError) as err:
        load_medmnist("breastmnist", "train", tmp_path)
    msg = str(err.value)
    assert "breastmnist.npz" in msg and "train_images" in msg and "['images', 'labels']" in msg


def test_labels_out_of_range(tmp_path: Path, breast_arrays: dict) -> None:
    arrays = dict(breast_arrays)
    labels = arrays["train_labels"].copy()
    labels[5, 0] = 7
    arrays["train_labels"] = labels
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    with pytest.raises(DataError) as err:
        load_medmnist("breastmnist", "train", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "breastmnist.npz") in msg and "train labels" in msg and "[7]" in msg
    # The other splits of the same file are fine.
    assert len(load_medmnist("breastmnist", "val", tmp_path)) == 78


def test_wrong_image_size_for_flag(tmp_path: Path, medmnist_dir: Path) -> None:
    # A 64^3 file under the 28^3 name: the shapes are checked against the size asked for.
    shutil.copy(medmnist_dir / "adrenalmnist3d_64.npz", tmp_path / "adrenalmnist3d.npz")
    with pytest.raises(DataError, match=r"expected images of size \(28, 28, 28\), got \(64, 64, 64\)"):
        load_medmnist("adrenalmnist3d", "val", tmp_path)


def test_ipc_larger_than_a_class(breast_train) -> None:
    sampler = ClassBalancedSampler(breast_train)
    smallest = min(breast_train.class_counts())
    sampler.check_ipc(smallest)
    with pytest.raises(ValueError) as err:
        sampler.check_ipc(smallest + 1)
    assert f"largest valid ipc is {smallest}" in str(err.value)
    assert "malignant" in str(err.value)  # names the class that is too small
    with pytest.raises(ValueError, match="ipc must be >= 1"):
        sampler.check_ipc(0)
