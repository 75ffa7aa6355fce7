"""Real bags: the kept patches of each slide of a tiled cohort, in the bag format synthetic bags use.

``make_real_bags(TILING_OUT, OUT)`` reads every tiled slide's patches with :func:`wsi.read_grid` (one open slide, one
copy per patch; :class:`wsi.SlidePatchDataset` when DataLoader workers are asked for) and writes
``OUT/bags/<slide_id>.pt`` (uint8 patches, level-0 coordinates, the slide label from the tiling manifest) plus
``OUT/manifest.csv`` with the columns of the synthetic-bag manifest. Real and synthetic bags are then trained
and evaluated by the same code. Like the other cohort steps it is resumable (finished slides are skipped when
their grid and settings are unchanged), records a bad slide as failed and goes on, and shards slides across
``torchrun`` ranks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_distill.checks import option_dict, option_int
from monai_distill.progress import progress_bar
from monai_distill.utils import check_output_dir
from wsi.datasets import SlidePatchDataset, load_grids
from wsi.distributed import barrier, dist_context, shard
from wsi.grid import PatchGrid
from wsi.manifest import read_status, write_status
from wsi.patches import read_grid

from .bags import DONE, Bag, BagDirectory, BagError, bag_file_intact, save_bag, write_bag_manifest

__all__ = [
    "FAILED",
    "bag_fingerprint",
    "bag_path",
    "grid_label",
    "label_index",
    "make_real_bags",
    "option_label_map",
    "read_real_bag",
    "run_cohort",
    "subsample_grid",
]

logger = logging.getLogger(__name__)

FAILED = "failed"


def bag_path(output_dir: str | os.PathLike, slide_id: str) -> Path:
    """Where the bag of ``slide_id`` is written."""
    return Path(output_dir) / "bags" / f"{slide_id}.pt"


def grid_label(grid: PatchGrid, label_map: dict[str, int] | None = None, missing: int | None = None) -> int:
    """The slide label of a tiled slide as a class index (``missing`` for a slide without one, when given).

    Raises:
        BagError: no label (a directory of slides was tiled; give a CSV with a label column) or a text label that
            ``label_map`` does not map.
    """
    return label_index(grid.label, grid.slide_id, label_map, "in its grid", missing=missing)


def option_label_map(value: Any, name: str = "label_map") -> dict[str, int] | None:
    """The ``--label_map`` option (text label -> class index), ``None`` when not given.

    Raises:
        OptionError: not a dict, or a class index that is not a whole number >= 0.
    """
    mapping = option_dict(value, name)
    if not mapping:
        return None
    return {str(k).strip(): option_int(v, f"--{name} (the class of '{k}')", minimum=0)  # type: ignore[misc]
            for k, v in mapping.items()}


def label_index(label: Any, slide_id: str, label_map: dict[str, int] | None = None, where: str = "",
                missing: int | None = None) -> int:
    """A slide label (as a slide list or grid gives it: text or a number) as a class index.

    Args:
        label: the label.
        slide_id: the slide, for the message.
        label_map: text label -> class index; without one the label must be a whole number >= 0.
        where: where the label comes from, for the message (e.g. ``"in 'cohort.csv'"``).
        missing: the class index a slide without a label gets (inference, where labels are not needed); ``None``:
            a missing label is an error.

    Raises:
        BagError: no label (and no ``missing``), a text label that ``label_map`` does not map, or not a class index.
    """
    where = f" {where}" if where else ""
    if (label is None or str(label).strip() == "" or str(label).strip().lower() == "nan") and missing is not None:
        return int(missing)
    if label is None or str(label).strip() == "":
        raise BagError(
            f"slide '{slide_id}' has no label{where}; tile a CSV slide list with a label column "
            "(slide_path,label[,split][,slide_id])."
        )
    if label_map is not None:
        key = str(label).strip()
        if key not in label_map:
            raise BagError(f"label '{label}' of slide '{slide_id}'{where} is not in --label_map {label_map}.")
        return int(label_map[key])
    try:
        number = float(label)
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer() or number < 0:
        raise BagError(
            f"label '{label}' of slide '{slide_id}'{where} is not a class index (0, 1, ...); pass --label_map to "
            "convert text labels."
        )
    return int(number)


def subsample_grid(grid: PatchGrid, max_patches: int | None, seed: int) -> PatchGrid:
    """At most ``max_patches`` patches of ``grid``, drawn at random without replacement, in grid order.

    The draw depends only on ``seed`` and the slide id, so a slide gets the same patches whatever else is run.
    """
    if max_patches is None or len(grid) <= int(max_patches):
        return grid
    rng = np.random.default_rng([int(seed), zlib.crc32(grid.slide_id.encode())])
    keep = np.sort(rng.choice(len(grid), size=int(max_patches), replace=False))
    return dataclasses.replace(grid, coords=grid.coords[keep], tissue_fraction=grid.tissue_fraction[keep])


def bag_fingerprint(grid: PatchGrid, label: int, settings: dict[str, Any]) -> str:
    """What a slide's bag depends on (label, settings, slide path, patch coordinates, grid spec), hashed: a bag on
    disk whose fingerprint differs is made again on resume."""
    h = hashlib.sha256(json.dumps({"label": label, **settings}, sort_keys=True).encode())
    h.update(grid.slide_path.encode())
    h.update(np.ascontiguousarray(grid.coords).tobytes())
    h.update(json.dumps(grid.spec.to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def read_real_bag(grid: PatchGrid, label: int, backend: str, batch_size: int, num_workers: int, meta: dict) -> Bag:
    """Read every patch of ``grid`` into one uint8 bag."""
    if not Path(grid.slide_path).is_file():
        raise FileNotFoundError(f"slide file '{grid.slide_path}' does not exist (moved since it was tiled?).")
    if num_workers > 0:  # worker processes read through MONAI's dataset, one open slide per worker
        dataset = SlidePatchDataset([grid], backend=backend, include_label=False)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False)
        try:
            patches = torch.cat([torch.as_tensor(batch["image"]).as_subclass(torch.Tensor) for batch in loader])
        finally:
            dataset.close()
    else:  # the fast path: one open slide, one copy per patch, no per-patch metadata objects
        patches = torch.from_numpy(read_grid(grid, backend=backend))
    info = grid.info
    return Bag(
        slide_id=grid.slide_id,
        label=label,
        patches=patches.to(torch.uint8),
        coords=torch.as_tensor(grid.coords, dtype=torch.int64),
        source="real",
        meta={
            **meta,
            "slide_path": grid.slide_path,
            "split": grid.split,
            "level0_size": list(info.dimensions[0]),
            "footprint": int(grid.spec.footprint),
            "patch_size": int(grid.spec.patch_size),
            "level": int(grid.spec.level),
            "mpp": grid.spec.mpp,
            "backend": info.backend,
        },
    )


def make_real_bags(
    tiling_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    slide_ids: Sequence[str] | None = None,
    split: str | None = None,
    max_patches: int | None = None,
    seed: int = 0,
    label_map: dict[str, int] | None = None,
    backend: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    missing_label: int | None = None,
) -> BagDirectory:
    """Write one real bag per tiled slide and the bag manifest.

    Args:
        tiling_dir: output of the ``wsi_tiling`` bundle (``coords/<slide_id>.json``, ``manifest.csv``).
        output_dir: where ``bags/<slide_id>.pt`` and ``manifest.csv`` go.
        slide_ids: only these slides (default: every tiled slide).
        split: only slides of this split (the tiling CSV's ``split`` column), e.g. ``"test"``.
        max_patches: at most this many patches per slide, drawn at random (seeded; see :func:`subsample_grid`).
        seed: seed of that draw.
        label_map: text label -> class index; numeric labels are used as they are.
        backend: ``WSIReader`` backend (default: the one that tiled the slide).
        batch_size: patches read per batch.
        num_workers: ``DataLoader`` worker processes reading patches.
        progress: show a progress bar (only on a terminal).
        missing_label: class index written for slides without a label (inference); ``None``: such a slide fails.

    Returns:
        The written bags (rank 0; other ranks get theirs after every rank finished).

    Raises:
        FileNotFoundError: no grids in ``tiling_dir``.
        BagError: no slide left after filtering, or no bag could be written.
    """
    out = check_output_dir(output_dir)
    grids = load_grids(tiling_dir)
    if slide_ids is not None:
        wanted = set(slide_ids)
        grids = [g for g in grids if g.slide_id in wanted]
    if split is not None:
        grids = [g for g in grids if g.split == split]
    if not grids:
        raise BagError(f"no tiled slide in '{tiling_dir}' matches split={split!r} and slide_ids={slide_ids!r}.")
    settings = {"max_patches": max_patches, "seed": int(seed)}

    def make_one(grid: PatchGrid) -> dict[str, Any]:
        thumbnail = Path(tiling_dir) / "thumbnails" / f"{grid.slide_id}.png"
        extra = {"thumbnail": str(thumbnail.resolve())} if thumbnail.is_file() else {}
        return _make_one(grid, out, settings, label_map, backend, batch_size, num_workers, extra, missing_label)

    return run_cohort(grids, out, make_one, "real bags", progress)


def run_cohort(
    grids: Sequence[PatchGrid],
    out: Path,
    make_one: Callable[[PatchGrid], dict[str, Any]],
    desc: str,
    progress: bool = True,
    extra_rows: Sequence[dict[str, Any]] = (),
) -> BagDirectory:
    """The cohort loop shared by real and synthetic bags: this rank's shard of ``grids`` through ``make_one``
    (which writes one bag and its status record and returns its manifest row), then rank 0 merges every rank's
    status records, plus ``extra_rows`` (slides that failed before bagging, e.g. in tiling), into ``manifest.csv``.

    Raises:
        BagError: no bag could be written at all.
    """
    rank, world = dist_context()
    rows_by_id: dict[str, dict[str, Any]] = {}
    bar = progress_bar(shard(grids, rank, world), desc=desc if world == 1 else f"{desc} (rank {rank})",
                       unit="slide", enabled=progress)
    for grid in bar:
        row = make_one(grid)
        rows_by_id[grid.slide_id] = row
        bar.set_postfix_str(f"{grid.slide_id}: {row['status']}")
    barrier()
    if rank == 0:
        rows = []
        for g in grids:
            st = rows_by_id.get(g.slide_id) or read_status(out, g.slide_id) or {
                "slide_id": g.slide_id, "status": FAILED, "error": "no status written"}
            rows.append({k: v for k, v in st.items() if k != "fingerprint"})
        rows += list(extra_rows)
        write_bag_manifest(out / "manifest.csv", rows)
        failed = [r["slide_id"] for r in rows if r["status"] != DONE]
        if failed:
            logger.warning("%s: %d slide(s) failed: %s", desc, len(failed), failed)
        if len(failed) == len(rows):
            raise BagError(f"no {desc.removesuffix('s')} could be written to '{out}'; see {out / 'manifest.csv'} "
                           "for the errors.")
    barrier()
    return BagDirectory(out)


def _make_one(
    grid: PatchGrid,
    out: Path,
    settings: dict[str, Any],
    label_map: dict[str, int] | None,
    backend: str | None,
    batch_size: int,
    num_workers: int,
    extra_meta: dict[str, Any],
    missing_label: int | None = None,
) -> dict[str, Any]:
    """Write one slide's bag (or skip it when an earlier run made the same one); return its manifest row."""
    start = time.perf_counter()
    row: dict[str, Any] = {"slide_id": grid.slide_id, "label": grid.label, "n_patches": 0, "n_synthetic": 0,
                           "status": FAILED, "seconds": 0.0, "error": "", "split": grid.split or ""}
    path = bag_path(out, grid.slide_id)
    try:
        label = grid_label(grid, label_map, missing_label)
        row["label"] = label
        sub = subsample_grid(grid, settings["max_patches"], settings["seed"])
        fingerprint = bag_fingerprint(sub, label, settings)
        old = read_status(out, grid.slide_id)
        if old and old.get("fingerprint") == fingerprint and old.get("status") == DONE and bag_file_intact(path):
            return {k: v for k, v in old.items() if k != "fingerprint"}
        bag = read_real_bag(sub, label, backend or grid.info.backend, batch_size, num_workers,
                        {"fingerprint": fingerprint, "n_tiled_patches": len(grid), **extra_meta})
        save_bag(bag, path)
        row.update(n_patches=len(bag), status=DONE)
    except Exception as e:  # one unreadable slide must not stop the cohort: record why and go on
        row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
        path.unlink(missing_ok=True)
        fingerprint = ""
        logger.warning("real bag of %s failed: %s", grid.slide_id, row["error"])
    row["seconds"] = round(time.perf_counter() - start, 3)
    write_status(out, row, fingerprint)
    return row

