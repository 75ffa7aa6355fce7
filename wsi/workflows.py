"""What the ``wsi_tiling`` bundle runs: tile a cohort of slides, one result per slide, resumable and sharded."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from monai_distill.utils import atomic_write_json, check_output_dir, to_bool

from . import manifest as mf
from .distributed import barrier, dist_context, shard
from .slides import SlideRecord, list_slides
from .thumbnail import save_thumbnail
from .tiling import NoTissueError, TilingConfig, tile_slide

__all__ = ["TilingWorkflow", "coords_path", "thumbnail_path"]

logger = logging.getLogger(__name__)


def coords_path(output_dir: str | os.PathLike, slide_id: str) -> Path:
    """Where the patch grid of ``slide_id`` is written."""
    return Path(output_dir) / "coords" / f"{slide_id}.json"


def thumbnail_path(output_dir: str | os.PathLike, slide_id: str) -> Path:
    """Where the thumbnail PNG of ``slide_id`` is written."""
    return Path(output_dir) / "thumbnails" / f"{slide_id}.png"


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


class TilingWorkflow:
    """Tile every slide of a cohort: tissue mask, patch grid, thumbnail, ``manifest.csv``.

    Output layout::

        OUT/coords/<slide_id>.json       patch grid (see wsi.grid.PatchGrid)
        OUT/thumbnails/<slide_id>.png    slide with tissue mask (green) and kept patches (blue)
        OUT/status/<slide_id>.json       the slide's manifest row (resume bookkeeping)
        OUT/manifest.csv                 slide_id, path, label, split, n_patches, status, seconds, error
        OUT/tiling_config.json           the parameters of the run

    Every file is written atomically. A rerun skips slides already finished with the same parameters (``done`` or
    ``no_tissue``; ``failed`` ones are retried unless ``retry_failed`` is false). A slide that cannot be read is
    recorded as ``failed`` with the reason, and the others go on. With an initialised ``torch.distributed`` group the
    slide list is sharded by rank and rank 0 writes the manifest after all ranks finish.

    Args:
        slides: directory of slides or CSV ``slide_path,label[,split][,slide_id]``.
        output_dir: output directory (created).
        patch_size: patch side in pixels at the requested resolution.
        level: pyramid level (exclusive with ``mpp``; neither means level 0).
        mpp: microns per pixel of the patches.
        stride: grid step at the patch resolution (defaults to ``patch_size``).
        tissue_threshold: minimum tissue fraction of a kept patch.
        backend: MONAI ``WSIReader`` backend: ``openslide``, ``tifffile`` or ``cucim``.
        mask_downsample: coarsest level-0 downsample of the tissue mask.
        mask_options: overrides of :class:`~wsi.tissue.TissueMaskConfig` fields.
        mpp_rtol: relative tolerance for matching a stored level to ``mpp``.
        thumbnail_size: longest side of the thumbnail PNGs.
        retry_failed: redo slides that failed in an earlier run.
        progress: show a progress bar (only on a terminal).
    """

    def __init__(
        self,
        slides: str | os.PathLike | list[SlideRecord],
        output_dir: str | os.PathLike,
        patch_size: int = 256,
        level: int | None = None,
        mpp: float | None = None,
        stride: int | None = None,
        tissue_threshold: float = 0.5,
        backend: str = "openslide",
        mask_downsample: float = 32.0,
        mask_options: dict[str, Any] | None = None,
        mpp_rtol: float = 0.1,
        thumbnail_size: int = 1024,
        retry_failed: bool = True,
        progress: bool = True,
    ) -> None:
        self.slides = slides
        self.output_dir = Path(output_dir)
        self.config = TilingConfig(
            patch_size=int(patch_size),
            level=None if level is None else int(level),
            mpp=None if mpp is None else float(mpp),
            stride=None if stride is None else int(stride),
            tissue_threshold=float(tissue_threshold),
            backend=str(backend),
            mask_downsample=float(mask_downsample),
            mask=mask_options or {},  # type: ignore[arg-type]
            mpp_rtol=float(mpp_rtol),
            thumbnail_size=int(thumbnail_size),
        )
        self.retry_failed = to_bool(retry_failed)
        self.progress = to_bool(progress)

    # ------------------------------------------------------------------ one slide
    def is_finished(self, record: SlideRecord) -> bool:
        """Whether an earlier run already finished ``record`` with the same parameters."""
        st = mf.read_status(self.output_dir, record.slide_id)
        if st is None or st.get("fingerprint") != self.config.fingerprint() or st.get("path") != str(record.path):
            return False
        if st.get("status") == mf.DONE:
            return coords_path(self.output_dir, record.slide_id).is_file()
        if st.get("status") == mf.NO_TISSUE:
            return True
        return st.get("status") == mf.FAILED and not self.retry_failed

    def process(self, record: SlideRecord) -> dict[str, Any]:
        """Tile one slide, write its grid and thumbnail, and return its manifest row (never raises for a bad slide)."""
        start = time.perf_counter()
        row: dict[str, Any] = {
            "slide_id": record.slide_id,
            "path": str(record.path),
            "label": record.label,
            "split": record.split,
            "n_patches": 0,
            "status": mf.FAILED,
            "seconds": 0.0,
            "error": "",
        }
        try:
            tiling = tile_slide(record.path, self.config, record.slide_id, record.label, record.split)
            tiling.grid.save(coords_path(self.output_dir, record.slide_id))
            thumb = tiling.thumbnail(self.config.thumbnail_size)
            save_thumbnail(thumb, thumbnail_path(self.output_dir, record.slide_id))
            row.update(n_patches=len(tiling.grid), status=mf.DONE)
        except NoTissueError as e:
            row.update(status=mf.NO_TISSUE, error=_one_line(e))
        except Exception as e:  # a bad slide must not stop the cohort: record why and go on
            row.update(status=mf.FAILED, error=_one_line(e))
            logger.warning("slide %s failed: %s", record.slide_id, row["error"])
        if row["status"] != mf.DONE:  # outputs of an earlier run with other parameters would now be stale
            coords_path(self.output_dir, record.slide_id).unlink(missing_ok=True)
            thumbnail_path(self.output_dir, record.slide_id).unlink(missing_ok=True)
        row["seconds"] = round(time.perf_counter() - start, 3)
        return row

    # ------------------------------------------------------------------ cohort
    def run(self) -> pd.DataFrame:
        """Tile this rank's share of the slides; rank 0 returns the merged manifest, other ranks their own rows."""
        rank, world = dist_context()
        records = list_slides(self.slides)
        check_output_dir(self.output_dir)
        fingerprint = self.config.fingerprint()
        if rank == 0:
            atomic_write_json(
                {"slides": str(self.slides) if not isinstance(self.slides, list) else "<list>",
                 "n_slides": len(records), "world_size": world, "fingerprint": fingerprint,
                 "config": self.config.to_dict()},
                self.output_dir / "tiling_config.json",
            )
        mine = shard(records, rank, world)
        todo = [r for r in mine if not self.is_finished(r)]
        logger.info(
            "rank %d/%d: %d slide(s) in shard, %d already finished, %d to tile -> %s",
            rank, world, len(mine), len(mine) - len(todo), len(todo), self.output_dir,
        )
        rows = []
        bar = tqdm(todo, desc=f"tiling (rank {rank})" if world > 1 else "tiling", unit="slide",
                   disable=None if self.progress else True, position=rank)
        for record in bar:
            row = self.process(record)
            mf.write_status(self.output_dir, row, fingerprint)
            rows.append(row)
            bar.set_postfix_str(f"{record.slide_id}: {row['status']}")
        barrier()
        if rank != 0:
            return pd.DataFrame(rows, columns=list(mf.MANIFEST_COLUMNS))
        table = mf.write_manifest(self.output_dir, records)
        counts = table["status"].value_counts().to_dict()
        logger.info("manifest %s: %s", self.output_dir / "manifest.csv", counts)
        return table
