"""Real bags from a tiled real-tissue cohort: the patches wsi reads, the cohort's labels, resume, failures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mil.bags import BagDirectory, BagError
from mil.real_bags import make_real_bags, subsample_grid
from wsi.datasets import SlidePatchDataset, load_grids
from wsi.grid import PatchGrid

from .conftest import COHORT_SLIDES, PATCH_SIZE


def test_one_bag_per_slide_with_the_cohort_labels(real_bags: BagDirectory, mil_cohort, mil_tiling: Path) -> None:
    _, table = mil_cohort
    assert len(real_bags) == COHORT_SLIDES and real_bags.manifest_path is not None
    labels = dict(zip(table.slide_id, table.label))
    tiled = pd.read_csv(mil_tiling / "manifest.csv").set_index("slide_id")
    manifest = pd.read_csv(real_bags.manifest_path).set_index("slide_id")
    for bag in real_bags:
        assert bag.source == "real" and bag.label == labels[bag.slide_id]
        assert bag.patches.dtype == torch.uint8 and bag.patch_shape == (3, PATCH_SIZE, PATCH_SIZE)
        assert len(bag) == tiled.loc[bag.slide_id, "n_patches"] == manifest.loc[bag.slide_id, "n_patches"]
        assert manifest.loc[bag.slide_id, "status"] == "done"
        assert bag.meta["level0_size"] == [1024, 768] and bag.meta["footprint"] == PATCH_SIZE * 4


def test_patches_are_what_wsi_reads(real_bags: BagDirectory, mil_tiling: Path) -> None:
    bag = real_bags[3]
    grid = PatchGrid.load(mil_tiling / "coords" / f"{bag.slide_id}.json")
    ds = SlidePatchDataset([grid], include_label=False)
    for i in (0, len(ds) - 1):
        item = ds[i]
        assert torch.equal(bag.patches[i], torch.as_tensor(np.asarray(item["image"])))
        assert tuple(bag.coords[i].tolist()) == tuple(item["image"].meta["coord"])
    ds.close()


def test_subsampling_is_seeded_and_keeps_grid_order(mil_tiling: Path) -> None:
    grid = load_grids(mil_tiling)[0]
    a, b, c = (subsample_grid(grid, 5, s) for s in (0, 0, 1))
    assert len(a) == 5 and np.array_equal(a.coords, b.coords) and not np.array_equal(a.coords, c.coords)
    rows = [tuple(r) for r in grid.coords.tolist()]
    positions = [rows.index(tuple(r)) for r in a.coords.tolist()]
    assert positions == sorted(positions)
    assert subsample_grid(grid, 10_000, 0) is grid


def test_split_max_patches_and_resume(tmp_path: Path, mil_tiling: Path, mil_cohort) -> None:
    _, table = mil_cohort
    bags = make_real_bags(mil_tiling, tmp_path, split="test", max_patches=6, progress=False)
    assert sorted(bags.slide_ids) == sorted(table.slide_id[table.split == "test"])
    assert all(len(b) == 6 and b.meta["split"] == "test" for b in bags)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "bags").glob("*.pt")}
    make_real_bags(mil_tiling, tmp_path, split="test", max_patches=6, progress=False)  # finished: nothing rewritten
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "bags").glob("*.pt")}
    make_real_bags(mil_tiling, tmp_path, split="test", max_patches=4, progress=False)  # other settings: redone
    assert all(len(b) == 4 for b in BagDirectory(tmp_path))


def test_bad_slides_are_recorded_and_the_others_go_on(tmp_path: Path, mil_tiling: Path) -> None:
    good, missing, unlabelled = load_grids(mil_tiling)[:3]
    tiling = tmp_path / "tiling"
    good.save(tiling / "coords" / f"{good.slide_id}.json")
    dataclasses.replace(missing, slide_path=str(tmp_path / "gone.tif")).save(
        tiling / "coords" / f"{missing.slide_id}.json")
    dataclasses.replace(unlabelled, label=None).save(tiling / "coords" / f"{unlabelled.slide_id}.json")
    bags = make_real_bags(tiling, tmp_path / "out", progress=False)
    assert bags.slide_ids == [good.slide_id]
    rows = pd.read_csv(tmp_path / "out" / "manifest.csv").set_index("slide_id")
    assert rows.loc[missing.slide_id, "status"] == "failed" and "gone.tif" in rows.loc[missing.slide_id, "error"]
    assert "no label" in rows.loc[unlabelled.slide_id, "error"]
    assert set(bags.skipped) == {missing.slide_id, unlabelled.slide_id}


def test_text_labels_need_a_label_map(tmp_path: Path, mil_tiling: Path) -> None:
    grid = load_grids(mil_tiling)[0]
    dataclasses.replace(grid, label="tumour").save(tmp_path / "tiling" / "coords" / f"{grid.slide_id}.json")
    with pytest.raises(BagError, match="no real bag could be written"):
        make_real_bags(tmp_path / "tiling", tmp_path / "a", progress=False)
    assert "label_map" in pd.read_csv(tmp_path / "a" / "manifest.csv").error[0]
    bags = make_real_bags(tmp_path / "tiling", tmp_path / "b", label_map={"tumour": 1, "normal": 0}, progress=False)
    assert bags[0].label == 1
