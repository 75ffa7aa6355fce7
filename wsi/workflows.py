"""What the ``wsi_tiling`` bundle runs: tile a cohort of slides, one result per slide, resumable and sharded."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from monai_distill.checks import OptionError, option_bool, option_choice, option_dict, option_float, option_int
from monai_distill.progress import progress_bar
from monai_distill.runs import FAILED_DIR, RunError, guarded_run, refuse_multiprocess_without_config
from monai_distill.utils import atomic_write_json, check_output_dir

from . import manifest as mf
from .components import ComponentError, coords_path, grid_options, thumbnail_path, tiling_components
from .distributed import barrier, dist_context, shard
from .reader import BACKENDS
from .slides import SlideRecord, check_slide_files, list_slides
from .tiling import NoTissueError, TilingConfig, tile_slide
from .tissue import TissueMaskConfig

__all__ = ["TilingError", "TilingWorkflow", "coords_path", "thumbnail_path", "tiling_config"]

logger = logging.getLogger(__name__)


def tiling_config(
    patch_size: Any = 256,
    level: Any = None,
    mpp: Any = None,
    stride: Any = None,
    tissue_threshold: Any = 0.5,
    backend: Any = "openslide",
    mask_downsample: Any = 32.0,
    mask_options: Any = None,
    mpp_rtol: Any = 0.1,
    thumbnail_size: Any = 1024,
) -> TilingConfig:
    """The :class:`~wsi.tiling.TilingConfig` of bundle options, every one checked first.

    Raises:
        OptionError: an option of the wrong type or out of range (``--patch_size 0``, ``--backend bogus``,
            ``--tissue_threshold 2``, both ``--level`` and ``--mpp``, an unknown ``--mask_options`` key); the message
            names the option, what it expects and what it got.
    """
    grid = grid_options(patch_size=patch_size, level=level, mpp=mpp, stride=stride, mpp_rtol=mpp_rtol,
                        tissue_threshold=tissue_threshold)
    mask = option_dict(mask_options, "mask_options")
    try:
        mask_config = TissueMaskConfig.from_any(mask)
    except (KeyError, TypeError, ValueError) as e:
        raise OptionError(f"--mask_options: {e.args[0] if isinstance(e, KeyError) and e.args else e}") from e
    return TilingConfig(
        **grid,
        backend=option_choice(backend, "backend", BACKENDS),  # type: ignore[arg-type]
        mask_downsample=option_float(mask_downsample, "mask_downsample", minimum=1.0),  # type: ignore[arg-type]
        mask=mask_config,
        thumbnail_size=option_int(thumbnail_size, "thumbnail_size", minimum=16),  # type: ignore[arg-type]
    )


FINAL_ARTEFACTS = ("manifest.csv", "tiling_config.json")


class TilingError(RunError):
    """No slide of a cohort could be tiled."""


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

    The slide reader, the tissue masker, the patch grid and the writer of these files are components that a config
    can replace (``reader_def``, ``masker_def``, ``grid_def``, ``writer_def``; see :mod:`wsi.components`); their
    defaults do what the flat options say.

    Every file is written atomically. A rerun skips slides already finished with the same parameters (``done`` or
    ``no_tissue``; ``failed`` ones are retried unless ``retry_failed`` is false). A slide that cannot be read is
    recorded as ``failed`` with the reason, and the others go on; options are checked when the workflow is built, and
    a run in which every slide failed (the same error for all: a level no slide has, a wrong folder) fails as a whole
    (:class:`TilingError`). With an initialised ``torch.distributed`` group the slide list is sharded by rank and
    rank 0 writes the manifest after all ranks finish; ``WORLD_SIZE`` > 1 without one is refused.

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
        reader_def: the slide reader (config entry ``reader_def``: a ``"_mode_": "callable"`` definition, a class or
            ``'module.Class'``); ``None``: :class:`~wsi.reader.Slide` with ``backend``.
        masker_def: the tissue masker (``masker_def``); ``None``: :class:`~wsi.components.TissueMasker` with
            ``mask_options`` and ``mask_downsample``.
        grid_def: the patch grid (``grid_def``); ``None``: :class:`~wsi.components.PatchGridder` with ``patch_size``,
            ``level``, ``mpp``, ``stride``, ``mpp_rtol`` and ``tissue_threshold``.
        writer_def: the writer of grids and thumbnails (``writer_def``); ``None``:
            :class:`~wsi.components.TilingWriter` with ``output_dir`` and ``thumbnail_size``.
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
        reader_def: Any = None,
        masker_def: Any = None,
        grid_def: Any = None,
        writer_def: Any = None,
    ) -> None:
        # Every option is checked here, before any slide is read: a bad value fails the run, not each slide.
        self.slides = slides
        self.output_dir = Path(output_dir)
        flat = tiling_config(
            patch_size=patch_size, level=level, mpp=mpp, stride=stride, tissue_threshold=tissue_threshold,
            backend=backend, mask_downsample=mask_downsample, mask_options=mask_options, mpp_rtol=mpp_rtol,
            thumbnail_size=thumbnail_size,
        )
        # The defaults fold into the config (same outputs and fingerprint as the flat options); others are recorded.
        self.config, self.components = tiling_components(flat, self.output_dir, reader_def=reader_def,
                                                         masker_def=masker_def, grid_def=grid_def,
                                                         writer_def=writer_def)
        self.retry_failed = option_bool(retry_failed, "retry_failed")
        self.progress = option_bool(progress, "progress")

    # ------------------------------------------------------------------ one slide
    def is_finished(self, record: SlideRecord) -> bool:
        """Whether an earlier run already finished ``record`` with the same parameters."""
        st = mf.read_status(self.output_dir, record.slide_id)
        if st is None or st.get("fingerprint") != self.config.fingerprint() or st.get("path") != str(record.path):
            return False
        if st.get("status") == mf.DONE:  # a damaged grid file (a killed copy, a full disk) is tiled again
            return bool(self.components.writer.is_written(record.slide_id))
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
        parts = self.components
        try:
            tiling = tile_slide(record.path, self.config, record.slide_id, record.label, record.split,
                                reader=parts.reader, masker=parts.masker, grid=parts.grid)
            parts.writer.write(tiling)
            row.update(n_patches=len(tiling.grid), status=mf.DONE)
        except NoTissueError as e:
            row.update(status=mf.NO_TISSUE, error=_one_line(e))
        except ComponentError:  # a component of the config that breaks its interface: the run stops, by its name
            raise
        except Exception as e:  # a bad slide must not stop the cohort: record why and go on
            row.update(status=mf.FAILED, error=_one_line(e))
            logger.warning("slide %s failed: %s", record.slide_id, row["error"])
        if row["status"] != mf.DONE:  # outputs of an earlier run with other parameters would now be stale
            parts.writer.remove(record.slide_id)
        row["seconds"] = round(time.perf_counter() - start, 3)
        return row

    # ------------------------------------------------------------------ cohort
    def run(self) -> pd.DataFrame:
        """Tile this rank's share of the slides; rank 0 returns the merged manifest, other ranks their own rows.

        The output directory is locked for the run and gets a ``status.json`` (``running``, ``finished`` or
        ``failed``; see :func:`monai_distill.runs.guarded_run`); a failed run's ``manifest.csv`` is moved to
        ``failed/``.
        """
        refuse_multiprocess_without_config("wsi_tiling")
        with guarded_run(self.output_dir, FINAL_ARTEFACTS, {"workflow": "wsi_tiling"}):
            return self._run()

    def _run(self) -> pd.DataFrame:
        rank, world = dist_context()
        records = list_slides(self.slides)
        check_slide_files(records, self.slides)
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
        bar = progress_bar(todo, desc=f"tiling (rank {rank})" if world > 1 else "tiling", unit="slide",
                           enabled=self.progress, position=rank)
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
        failed = table[table["status"] == mf.FAILED]
        if len(failed) == len(table):  # the same error on every slide is a configuration error: fail the run
            first = failed.iloc[0]
            raise TilingError(
                f"all {len(table)} slide(s) failed to tile, e.g. '{first['slide_id']}': {first['error']} (one row "
                f"per slide in {self.output_dir / FAILED_DIR / 'manifest.csv'})"
            )
        return table
