"""load_volume_csv on real CT (label 0) and MR (label 1) volumes listed in CSVs written in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from monai_distill.data import DataError, clear_volume_cache, load_volume_csv, read_volume_csv

SIZE = (16, 16, 16)  # small enough that the whole file runs in seconds
CT_FILES = ("totalseg_example_ct_sm.nii.gz", "totalseg_example_ct.nii.gz")
MR_FILES = (
    "totalseg_example_mr_sm.nii.gz",
    "ProstateX-0000_t2_tse_tra_4.nii.gz",
    "anatomical.nii",
    "ProstateX-0000_ep2d_diff_tra_7_ADC.nii.gz",
)


def _write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def all_rows(volumes_dir: Path) -> list[str]:
    return [f"{volumes_dir / f},0" for f in CT_FILES] + [f"{volumes_dir / f},1" for f in MR_FILES]


def test_no_split_column_all_train(tmp_path: Path, all_rows: list[str]) -> None:
    csv_path = _write_csv(tmp_path / "scans.csv", ["path,label", *all_rows])
    ds = load_volume_csv(csv_path, spatial_size=SIZE)
    assert ds.images.shape == (6, 1, *SIZE) and ds.spatial_dims == 3
    assert ds.labels.tolist() == [0, 0, 1, 1, 1, 1]
    assert ds.num_classes == 2 and ds.class_names == ["0", "1"] and ds.task == "binary-class"
    assert ds.name == "scans" and ds.split == "train"
    assert torch.isfinite(ds.images).all()
    assert abs(float(ds.images.mean())) < 1e-4 and float(ds.images.std()) == pytest.approx(1.0, abs=1e-3)
    # Each volume was scaled to [0, 1] by its own 0.5-99.5 percentiles before the train normalisation.
    raw = ds.images * ds.std[0] + ds.mean[0]
    assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1 + 1e-5
    assert ds.extra["spatial_size"] == list(SIZE)

    with pytest.raises(DataError, match="no 'split' column, so all its rows are train data") as err:
        load_volume_csv(csv_path, "val", spatial_size=SIZE)
    assert "no val split" in str(err.value)


def test_split_column_and_relative_paths(tmp_path: Path, volumes_dir: Path) -> None:
    splits = ["train", "train", "train", "train", "val", "test"]
    files = [*CT_FILES[:1], *MR_FILES[:1], *CT_FILES[1:], *MR_FILES[1:]]
    labels = [0, 1, 0, 1, 1, 1]
    # Paths relative to the CSV's own folder (tmp_path), which is how a CSV shipped beside its data is written.
    rel = [os.path.relpath(volumes_dir / f, tmp_path) for f in files]
    lines = ["Path, Label, Split"] + [f"{p},{y},{s}" for p, y, s in zip(rel, labels, splits)]
    csv_path = _write_csv(tmp_path / "scans.csv", lines)
    names = ["CT", "MR"]
    train = load_volume_csv(csv_path, "train", SIZE, class_names=names)
    val = load_volume_csv(csv_path, "val", SIZE, class_names=names)
    test = load_volume_csv(csv_path, "test", SIZE, class_names=names)
    assert [len(train), len(val), len(test)] == [4, 1, 1]
    assert train.labels.tolist() == [0, 1, 0, 1] and train.class_names == names
    assert val.mean == train.mean and test.std == train.std  # train statistics for every split

    # The same files named relative to `root` instead of the CSV's folder give the same volumes.
    lines = ["path,label,split"] + [f"{f},{y},{s}" for f, y, s in zip(files, labels, splits)]
    other = _write_csv(tmp_path / "rooted.csv", lines)
    val_rooted = load_volume_csv(other, "val", SIZE, root=volumes_dir, cache=False)
    torch.testing.assert_close(val_rooted.images, val.images)


def test_cache_gives_same_volumes(tmp_path: Path, volumes_dir: Path) -> None:
    csv_path = _write_csv(
        tmp_path / "two.csv", ["path,label", f"{volumes_dir / CT_FILES[0]},0", f"{volumes_dir / 'anatomical.nii'},1"]
    )
    clear_volume_cache()
    cached = load_volume_csv(csv_path, spatial_size=SIZE)
    again = load_volume_csv(csv_path, spatial_size=SIZE)
    fresh = load_volume_csv(csv_path, spatial_size=SIZE, cache=False)
    assert torch.equal(cached.images, again.images) and torch.equal(cached.images, fresh.images)


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothere\.csv"):
        load_volume_csv(tmp_path / "nothere.csv", spatial_size=SIZE)


def test_missing_column_names_found_columns(tmp_path: Path, all_rows: list[str]) -> None:
    csv_path = _write_csv(tmp_path / "bad.csv", ["file,label", *all_rows])
    with pytest.raises(DataError) as err:
        load_volume_csv(csv_path, spatial_size=SIZE)
    msg = str(err.value)
    assert "bad.csv" in msg and "['path']" in msg and "found columns ['file', 'label']" in msg


def test_missing_file_row(tmp_path: Path, all_rows: list[str]) -> None:
    missing = tmp_path / "gone" / "scan_that_is_not_there.nii.gz"
    csv_path = _write_csv(tmp_path / "scans.csv", ["path,label", *all_rows[:2], f"{missing},1", *all_rows[2:]])
    with pytest.raises(FileNotFoundError) as err:
        load_volume_csv(csv_path, spatial_size=SIZE)
    assert f"row 3: '{missing}'" in str(err.value)


def test_unreadable_file_row(tmp_path: Path, all_rows: list[str], shared_data: Path) -> None:
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti volume" * 20)
    csv_path = _write_csv(tmp_path / "scans.csv", ["path,label", *all_rows[:1], f"{broken},1"])
    with pytest.raises(DataError) as err:
        load_volume_csv(csv_path, spatial_size=SIZE)
    assert f"row 2: cannot read '{broken}'" in str(err.value)

    # A real 2D image (an H&E tile) is readable but is not a volume.
    tile = shared_data / "he_tiles" / "histolab_no-tissue.png"
    csv_path = _write_csv(tmp_path / "flat.csv", ["path,label", *all_rows[:1], f"{tile},1"])
    with pytest.raises(DataError, match=r"row 2: .*not a 3D volume: read as shape \(4, 512, 512\)"):
        load_volume_csv(csv_path, spatial_size=SIZE)


@pytest.mark.parametrize("label", ["abc", "0.5", "-1", ""])
def test_non_integer_label(tmp_path: Path, all_rows: list[str], label: str) -> None:
    path = all_rows[0].split(",")[0]
    csv_path = _write_csv(tmp_path / "scans.csv", ["path,label", *all_rows[1:], f"{path},{label}"])
    with pytest.raises(DataError, match=f"row 6 has label '{label}'; labels must be integers"):
        read_volume_csv(csv_path)


def test_other_csv_errors(tmp_path: Path, all_rows: list[str]) -> None:
    with pytest.raises(DataError, match="is empty"):
        load_volume_csv(_write_csv(tmp_path / "empty.csv", []), spatial_size=SIZE)
    with pytest.raises(DataError, match="no data rows"):
        load_volume_csv(_write_csv(tmp_path / "header.csv", ["path,label"]), spatial_size=SIZE)
    bad_split = _write_csv(tmp_path / "split.csv", ["path,label,split", f"{all_rows[0]},training"])
    with pytest.raises(DataError, match="row 1 has split 'training'"):
        load_volume_csv(bad_split, spatial_size=SIZE)
    only_train = _write_csv(tmp_path / "only_train.csv", ["path,label,split", f"{all_rows[0]},train"])
    with pytest.raises(DataError, match="no rows with split 'test'"):
        load_volume_csv(only_train, "test", spatial_size=SIZE)
    no_train = _write_csv(tmp_path / "no_train.csv", ["path,label,split", f"{all_rows[0]},val"])
    with pytest.raises(DataError, match="no train rows"):
        load_volume_csv(no_train, "val", spatial_size=SIZE)
    three = _write_csv(tmp_path / "three.csv", ["path,label", *all_rows[:1], f"{all_rows[1].split(',')[0]},2"])
    with pytest.raises(DataError, match=r"for the 2 class_names given; found row 2: 2"):
        load_volume_csv(three, spatial_size=SIZE, class_names=["CT", "MR"])
    with pytest.raises(ValueError, match="three positive ints"):
        load_volume_csv(three, spatial_size=(16, 16))
