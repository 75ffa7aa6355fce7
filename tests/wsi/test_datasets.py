"""Patch datasets over saved grids: MONAI PatchWSIDataset items, one open slide per worker, DataLoader workers."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from wsi.datasets import SlidePatchDataset, load_grids
from wsi.workflows import TilingWorkflow


@pytest.fixture(scope="module")
def tiled_cohort(cohort, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root, _ = cohort
    out = tmp_path_factory.mktemp("tiled_cohort")
    TilingWorkflow(root / "cohort.csv", out, patch_size=64, progress=False).run()
    return out


def test_items(tiled_cohort: Path, cohort) -> None:
    _, table = cohort
    ds = SlidePatchDataset(tiled_cohort)
    grids = load_grids(tiled_cohort)
    assert len(ds) == sum(len(g) for g in grids) > 100
    item = ds[0]
    img = item["image"]
    assert tuple(img.shape) == (3, 64, 64) and img.dtype == torch.uint8
    assert img.meta["slide_id"] == "slide_000" and tuple(img.meta["coord"]) == tuple(grids[0].coords[0])
    labels = {g.slide_id: float(g.label) for g in grids}
    assert labels == {r.slide_id: float(r.label) for r in table.itertuples()}
    assert float(item["label"]) == labels["slide_000"]
    ds.close()


def test_each_slide_is_opened_once(tiled_cohort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = SlidePatchDataset(tiled_cohort)
    opened: list[str] = []
    real_read = ds.wsi_reader.read
    monkeypatch.setattr(ds.wsi_reader, "read", lambda path, **kw: opened.append(path) or real_read(path, **kw))
    for i in range(len(ds)):
        ds[i]
    assert len(opened) == len(set(opened)) == len(ds.grids)
    ds.close()


def test_open_slides_are_bounded(tiled_cohort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = SlidePatchDataset(tiled_cohort, max_open_slides=2)
    opened: list[str] = []
    real_read = ds.wsi_reader.read
    monkeypatch.setattr(ds.wsi_reader, "read", lambda path, **kw: opened.append(path) or real_read(path, **kw))
    firsts = [next(i for i, d in enumerate(ds.data) if d["slide_id"] == g.slide_id) for g in ds.grids[:3]]
    for i in firsts * 2:  # three slides round-robin through two handles: every access reopens
        ds[i]
        assert len(ds._handles) <= 2
    assert len(opened) == 6
    ds.close()


def test_dataloader_workers_give_the_same_patches(tiled_cohort: Path) -> None:
    ds = SlidePatchDataset(tiled_cohort)
    subset = Subset(ds, list(range(0, len(ds), max(1, len(ds) // 48))))
    ref = torch.cat([b["image"] for b in DataLoader(subset, batch_size=16, num_workers=0)])
    got = torch.cat([b["image"] for b in DataLoader(subset, batch_size=16, num_workers=2)])
    assert torch.equal(ref.as_tensor(), got.as_tensor())
    state = pickle.loads(pickle.dumps(ds))  # spawn-started workers pickle the dataset: open handles are dropped
    assert len(state._handles) == 0 and torch.equal(state[0]["image"].as_tensor(), ds[0]["image"].as_tensor())
    ds.close()


def test_text_labels_need_a_map(tiled_cohort: Path) -> None:
    names = {"0": "normal", "1": "tumour"}
    grids = [dataclasses.replace(g, label=names[str(g.label)]) for g in load_grids(tiled_cohort)]
    assert "label" not in SlidePatchDataset(grids)[0]
    with pytest.raises(ValueError, match="label_map"):
        SlidePatchDataset(grids, include_label=True)
    ds = SlidePatchDataset(grids, label_map={"normal": 0, "tumour": 1})
    assert {float(ds[i]["label"]) for i in (0, len(ds) - 1)} <= {0.0, 1.0}
    with pytest.raises(KeyError, match="not in label_map"):
        SlidePatchDataset(grids, label_map={"normal": 0})


def test_cohort_thumbnails_show_the_grid(tiled_cohort: Path) -> None:
    """The cohort's mask comes from its 1/4 level (256 px wide); the thumbnail is re-read finer so the grid shows."""
    for png in (tiled_cohort / "thumbnails").glob("*.png"):
        assert max(Image.open(png).size) == 1024


def test_no_grids(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="wsi_tiling"):
        SlidePatchDataset(tmp_path)
