"""Per-slide synthetic bags: Histo-DD run on each slide's patches (seed 003, slide level).

For every slide of a tiled cohort, the slide's patches (with the slide's label) are distilled into ``ipc`` synthetic
patches by a registered method (Histo-DD by default, :class:`~monai_distill.methods.HistoDD`); those patches are the
slide's synthetic bag, written in the bag format real bags use (:mod:`mil.bags`), so the MIL heads train on them
unchanged and are tested on the real bags of held-out slides.

What is shared by the whole cohort, fitted once and saved under the output directory (so every slide, every rank
and every resumed run uses the same):

* the normalisation (per-channel mean/std of a sample of patches from every slide): all bags live in one unit;
* the stain template (Histo-DD §3.1: the sample patch whose statistics are closest to the sample's),
  ``stain_template.json``;
* the model pool S of Histo-DD (networks pretrained on that cohort sample, all classes), ``cache/model_pools/<key>/``.

Patch labels: by default every patch of a slide carries the slide's label. With ``annotations`` (a folder of
label masks ``<slide_id>.png``, any scale, 0 = unannotated, value k > 0 = class k - 1 unless ``annotation_labels``
maps it), a patch whose footprint is at least half annotated takes the majority annotated class, the others keep the
slide label; a slide then distils ``ipc`` patches of each class it shows (Histo-DD with patch labels, as the issue
and seed 003 describe for slides with an annotation mask), so a small positive region is distilled as its own class
instead of being averaged into the slide's majority tissue.

Per slide, the patches may hold one class only: the distiller keeps the cohort's classes (``num_classes``) and
distils the classes present (``DistillConfig.allow_absent_classes``). A slide with fewer patches than ``ipc`` gets
all of them as its bag's starting point (``n_synthetic`` records the count). Every slide is seeded from the run's
seed and its id, so a slide's bag is the same whatever the sharding, the order or the other slides.

Output layout::

    OUT/tiling/...                  the wsi_tiling output (when ``slides`` is a slide folder or CSV, not a tiling)
    OUT/bags/<slide_id>.pt          the synthetic bag (atomic)
    OUT/png/<slide_id>.png          the synthetic bag, the real patches it started from, other real patches
    OUT/status/<slide_id>.json      the slide's manifest row + fingerprint (resume bookkeeping)
    OUT/cards/<slide_id>.json       the bag's trust card: nearness to its slide's real patches, near-copy flags
    OUT/card.json, OUT/card.md      the cohort's trust card (every slide's card, settings hash; monai_distill.trust)
    OUT/manifest.csv                slide_id, label, n_patches, n_synthetic, status, seconds, error, split
    OUT/cohort.json                 the shared normalisation, template, pool key and settings
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from monai_distill.augment import StainTemplate
from monai_distill.checks import OptionError, option_bool, option_choice, option_dict, option_int
from monai_distill.data import RealDataset, SyntheticSet
from monai_distill.methods import DistillConfig, Distiller, get_method
from monai_distill.networks import NETWORKS
from monai_distill.presets import Preset, get_preset
from monai_distill.progress import progress_bar
from monai_distill.runs import guarded_run, refuse_multiprocess_without_config
from monai_distill.trust.bags import slide_card, slide_card_path, write_cohort_card
from monai_distill.utils import (
    atomic_torch_save,
    atomic_write_json,
    check_output_dir,
    resolve_device,
    seed_everything,
    to_bool,
)
from wsi import manifest as wsi_manifest
from wsi.datasets import load_grids
from wsi.distributed import barrier, dist_context
from wsi.grid import PatchGrid
from wsi.manifest import read_status, write_status
from wsi.reader import BACKENDS
from wsi.slides import check_slide_files, list_slides
from wsi.workflows import TilingWorkflow

from .bags import BAG_STORAGE, DONE, Bag, BagDirectory, BagError, bag_file_intact, save_bag
from .grouping import (
    GROUPINGS,
    CohortEncoder,
    GroupingConfig,
    build_encoder,
    cohort_network,
    embed_patches,
    group_patches,
    split_budget,
    train_cohort_encoder,
)
from .real_bags import (
    FAILED,
    bag_fingerprint,
    bag_path,
    grid_label,
    label_index,
    option_label_map,
    read_real_bag,
    run_cohort,
    subsample_grid,
)

__all__ = ["SyntheticBagsWorkflow", "annotation_patch_labels", "png_path", "slide_seed"]

logger = logging.getLogger(__name__)


def png_path(output_dir: str | os.PathLike, slide_id: str) -> Path:
    """Where the picture of ``slide_id``'s synthetic bag is written."""
    return Path(output_dir) / "png" / f"{slide_id}.png"


def slide_seed(seed: int, slide_id: str) -> int:
    """The seed of one slide's distillation: the run's seed and the slide id, nothing else (sharding-invariant)."""
    return (int(seed) * 1_000_003 + zlib.crc32(slide_id.encode())) % (2**31 - 1)


def annotation_patch_labels(
    mask: np.ndarray, grid: PatchGrid, value_to_class: dict[int, int] | None = None
) -> np.ndarray:
    """Class of each patch of ``grid`` from a label mask of the slide (any scale), ``-1`` where unannotated.

    A patch takes the most frequent non-zero mask value inside its level-0 footprint when non-zero values cover at
    least half of it; value ``k`` is class ``value_to_class[k]`` (default ``k - 1``).

    Raises:
        ValueError: the mask is not a 2D label image, or holds a value that ``value_to_class`` does not map.
    """
    return mask_patch_labels(mask, np.asarray(grid.coords), grid.spec.footprint, grid.info.dimensions[0],
                             grid.slide_id, value_to_class)


def mask_patch_labels(
    mask: np.ndarray,
    coords: np.ndarray,
    footprint: int,
    level0_size: Sequence[int],
    slide_id: str,
    value_to_class: dict[int, int] | None = None,
) -> np.ndarray:
    """:func:`annotation_patch_labels` for patches given by their level-0 ``(x, y)`` corners and footprint (a real
    bag's ``coords`` and meta ``footprint`` / ``level0_size``)."""
    if mask.ndim != 2:
        raise ValueError(f"annotation mask of '{slide_id}' must be a 2D label image, got shape {mask.shape}.")
    width, height = level0_size
    sx, sy = mask.shape[1] / width, mask.shape[0] / height
    out = np.full(len(coords), -1, dtype=np.int64)
    for i, (x, y) in enumerate(coords):
        x0, y0 = int(x * sx), int(y * sy)
        region = mask[y0 : max(y0 + 1, int((y + footprint) * sy)), x0 : max(x0 + 1, int((x + footprint) * sx))]
        values, counts = np.unique(region[region > 0], return_counts=True)
        if counts.sum() * 2 < region.size or len(values) == 0:
            continue
        value = int(values[np.argmax(counts)])
        if value_to_class is not None and value not in value_to_class:
            raise ValueError(f"annotation mask of '{slide_id}' holds value {value}, which annotation_labels "
                             f"{value_to_class} does not map.")
        out[i] = value_to_class[value] if value_to_class is not None else value - 1
    return out


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


class SyntheticBagsWorkflow:
    """Distil every slide of a cohort into a synthetic bag (what the ``wsi_synthetic_bags`` bundle runs).

    Args:
        slides: a tiling output directory (``wsi_tiling``'s ``OUT``, with ``coords/``), or a slide folder / CSV
            (``slide_path,label[,split][,slide_id]``), which is tiled first into ``output_dir/tiling``.
        output_dir: where bags, PNGs and the manifest go.
        ipc: synthetic patches per slide (per class present on the slide).
        preset: ``quick`` or ``paper`` (Histo-DD's K, U, pool; see :class:`~monai_distill.methods.HistoDD`).
        method: a registered distiller; ``histodd`` by default (``random``, ``dm``, ... for comparisons).
        arch: the distillation network (Histo-DD: ResNetAP-10).
        seed: base seed (each slide is seeded from it and its id, :func:`slide_seed`).
        device: ``cuda`` when available by default.
        split: only slides of this split (the tiling CSV's ``split`` column), e.g. ``"train"``.
        max_patches: at most this many real patches per slide are distilled (seeded draw; ``None``: all).
        pool_patches: patches per slide in the cohort sample that fits normalisation, stain template and model pool.
        label_map: text label -> class index; numeric labels are used as they are.
        num_classes: number of slide classes (default: from the labels of the cohort, at least 2).
        preset_overrides: preset fields to change (e.g. ``{"width": 16}``).
        method_options: method options over the preset's (e.g. ``{"iterations": 5}``).
        tiling: ``wsi_tiling`` arguments when ``slides`` is not tiled yet (``patch_size``, ``level``, ``mpp``, ...,
            and the components ``reader_def``, ``masker_def``, ``grid_def``, ``writer_def`` of :mod:`wsi.components`).
        backend: ``WSIReader`` backend reading patches (default: the one that tiled the slide).
        annotations: folder of label masks ``<slide_id>.png`` (see the module doc); slides without one use the slide
            label for every patch.
        annotation_labels: mask value -> class index (default: value k > 0 is class k - 1).
        png_real: real patches drawn beside the synthetic bag in each slide's PNG.
        progress: progress bars (only on a terminal).
        storage: how bag patches are stored (``float32``, ``float16`` or ``uint8``; :meth:`mil.bags.Bag.compact`).
        grouping: ``cluster`` (default): the patches of an unannotated slide are split into groups without labels
            and each group is distilled into its own synthetic patches (:mod:`mil.grouping`), so a small distinct
            region keeps patches of its own; ``slide_label``: every patch of a slide is distilled together (the
            paper's per-slide bags). ``cluster`` is the default because it wins where it matters: on the hard cohort
            (a positive region of 3-8 % of the tissue) its bags keep 0.93-1.00 of the real bags' MIL AUC against
            0.39-0.79 for ``slide_label`` (``benchmarks/results/mil_hard.md``), at about twice the seconds per
            slide. Annotated slides use their masks either way.
        grouping_options: :class:`~mil.grouping.GroupingConfig` fields (``max_groups``, ``min_group_size``, ...).
    """

    def __init__(
        self,
        slides: str | os.PathLike,
        output_dir: str | os.PathLike,
        ipc: int = 10,
        preset: str = "quick",
        method: str = "histodd",
        arch: str = "resnetap10",
        seed: int = 0,
        device: str | torch.device | None = None,
        split: str | None = None,
        max_patches: int | None = None,
        pool_patches: int = 64,
        label_map: dict[str, int] | None = None,
        num_classes: int | None = None,
        preset_overrides: dict[str, Any] | None = None,
        method_options: dict[str, Any] | None = None,
        tiling: dict[str, Any] | None = None,
        backend: str | None = None,
        annotations: str | os.PathLike | None = None,
        annotation_labels: dict[int, int] | None = None,
        png_real: int = 10,
        progress: bool = True,
        storage: str = "float32",
        grouping: str = "cluster",
        grouping_options: dict[str, Any] | None = None,
    ) -> None:
        # Names and numbers are checked before any slide is read (monai_distill.checks: the message names the option).
        try:
            self.method_cls = get_method(method)
        except KeyError as e:
            raise OptionError(f"--method: {e.args[0] if e.args else e}") from e
        self.method = self.method_cls.name
        self.arch: str = option_choice(arch, "arch", NETWORKS.names())  # type: ignore[assignment]
        overrides = option_dict(preset_overrides, "preset_overrides")
        try:
            self.preset: Preset = get_preset(preset, 2, **overrides)
        except (KeyError, TypeError, ValueError) as e:
            raise OptionError(f"--preset {preset!r} / --preset_overrides {overrides}: "
                              f"{e.args[0] if isinstance(e, KeyError) and e.args else e}") from e
        self.ipc: int = option_int(ipc, "ipc", minimum=1)  # type: ignore[assignment]
        self.pool_patches: int = option_int(pool_patches, "pool_patches", minimum=1)  # type: ignore[assignment]
        self.max_patches = option_int(max_patches, "max_patches", minimum=0, allow_none=True) or None
        self.slides, self.output_dir = slides, Path(output_dir)
        self.seed: int = option_int(seed, "seed")  # type: ignore[assignment]
        self.split = None if split in (None, "") else str(split)
        try:
            self.device = resolve_device(device)
        except (RuntimeError, ValueError) as e:
            raise OptionError(f"--device must be cpu, cuda or cuda:N on a machine that has it; got {device!r} "
                              f"({e}).") from e
        self.label_map = option_label_map(label_map)
        self.num_classes = option_int(num_classes, "num_classes", minimum=2, allow_none=True)
        self.method_options = option_dict(method_options, "method_options")
        self.tiling = option_dict(tiling, "tiling")
        try:  # --patch_size 0, --backend bogus, ...: the run fails now, not once per slide
            TilingWorkflow([], self.output_dir / "tiling", **self.tiling)
        except TypeError as e:
            raise OptionError(f"--tiling {self.tiling}: {e}") from e
        self.backend = option_choice(backend, "backend", BACKENDS, allow_none=True)
        self.png_real: int = option_int(png_real, "png_real", minimum=0)  # type: ignore[assignment]
        self.progress = option_bool(progress, "progress")
        self.storage: str = option_choice(storage, "storage", BAG_STORAGE)  # type: ignore[assignment]
        self.grouping: str = option_choice(grouping, "grouping", GROUPINGS)  # type: ignore[assignment]
        self.grouping_options = GroupingConfig.from_any(option_dict(grouping_options, "grouping_options"))
        self._group_encoder: Any = None
        self.annotations = Path(annotations) if annotations else None
        if self.annotations is not None and not self.annotations.is_dir():
            raise FileNotFoundError(f"--annotations: annotations folder '{self.annotations}' does not exist (one "
                                    "<slide_id>.png label mask per annotated slide).")
        labels = option_dict(annotation_labels, "annotation_labels")
        self.annotation_labels = {option_int(k, "--annotation_labels (a mask value)", minimum=1):  # type: ignore[misc]
                                  option_int(v, f"--annotation_labels (the class of value {k})", minimum=0)
                                  for k, v in labels.items()} or None

    @property
    def _sample_path(self) -> Path:
        return self.output_dir / "cache" / "cohort_sample.pt"

    # ------------------------------------------------------------------ the cohort
    def _grids(self) -> tuple[list[PatchGrid], list[dict[str, Any]]]:
        """Tiled slides to distil, and manifest rows of the slides that could not be tiled."""
        source = Path(self.slides)
        if not source.exists():
            raise FileNotFoundError(f"--slides '{source}' does not exist (a slide folder, a slide CSV, or a tiling "
                                    "output directory).")
        if (source / "coords").is_dir():
            tiling_dir = source
        else:  # the slide list is checked (files, labels) before anything is tiled
            records = [r for r in list_slides(source) if self.split is None or r.split == self.split]
            check_slide_files(records, source)
            self._check_labels([(r.slide_id, r.label) for r in records], f"in '{source}'")
            tiling_dir = self.output_dir / "tiling"
            TilingWorkflow(source, tiling_dir, progress=self.progress, **self.tiling).run()
        failed_tiling = []
        manifest = tiling_dir / "manifest.csv"
        if manifest.is_file():
            table = pd.read_csv(manifest, keep_default_na=False)
            for row in table.to_dict("records"):
                if row.get("status") != wsi_manifest.DONE and (self.split is None or row.get("split") == self.split):
                    failed_tiling.append({"slide_id": row["slide_id"], "label": row.get("label"), "n_patches": 0,
                                          "n_synthetic": 0, "status": row.get("status") or FAILED, "seconds": 0.0,
                                          "error": f"tiling: {row.get('error', '')}", "split": row.get("split", "")})
        grids = load_grids(tiling_dir) if (tiling_dir / "coords").is_dir() else []
        if self.split is not None:
            grids = [g for g in grids if g.split == self.split]
        self._check_labels([(g.slide_id, g.label) for g in grids], f"in '{tiling_dir}'")
        if not grids:
            why = f", e.g. {failed_tiling[0]['slide_id']}: {failed_tiling[0]['error']}" if failed_tiling else ""
            raise BagError(f"no tiled slide in '{tiling_dir}'" + (f" of split '{self.split}'" if self.split else "")
                           + why)
        return grids, failed_tiling

    def _check_labels(self, labels: list[tuple[str, Any]], where: str) -> None:
        """Every slide has a label that is a class index (or a ``label_map`` key) below ``num_classes``."""
        for slide_id, label in labels:
            index = label_index(label, slide_id, self.label_map, where)
            if self.num_classes is not None and index >= self.num_classes:
                raise BagError(f"--num_classes {self.num_classes}: slide '{slide_id}' {where} has label {label} "
                               f"(class {index}); labels must be 0..{self.num_classes - 1}.")

    def _annotation(self, grid: PatchGrid) -> Path | None:
        if self.annotations is None:
            return None
        path = self.annotations / f"{grid.slide_id}.png"
        return path if path.is_file() else None

    def _patch_labels(self, grid: PatchGrid, label: int) -> torch.Tensor:
        """Per-patch classes: the slide label, replaced by the annotation mask's class where it has one."""
        labels = torch.full((len(grid),), label, dtype=torch.long)
        path = self._annotation(grid)
        if path is not None:
            mask = np.asarray(Image.open(path))
            found = torch.as_tensor(annotation_patch_labels(mask, grid, self.annotation_labels))
            labels = torch.where(found >= 0, found, labels)
        return labels

    def _cohort_sample(self, grids: list[PatchGrid]) -> tuple[torch.Tensor, torch.Tensor]:
        """``pool_patches`` real patches of every readable slide as float [0, 1], and their slide labels."""
        images, labels, errors = [], [], []
        for grid in progress_bar(grids, desc="cohort sample", unit="slide", enabled=self.progress):
            try:
                label = grid_label(grid, self.label_map)
                sub = subsample_grid(grid, self.pool_patches, self.seed)
                bag = read_real_bag(sub, label, self.backend or grid.info.backend, 64, 0, {})
                patch_labels = self._patch_labels(sub, label)
            except Exception as e:  # the slide will fail again, and be recorded, in its own step
                errors.append(f"{grid.slide_id}: {e}")
                logger.warning("cohort sample: slide %s skipped: %s", grid.slide_id, e)
                continue
            images.append(bag.patches.float() / 255.0)
            labels.append(patch_labels)
        if not images:
            raise BagError(f"no slide of '{self.slides}' could be read, e.g. {errors[0]}")
        return torch.cat(images), torch.cat(labels)

    def _prepare_cohort(self, grids: list[PatchGrid]) -> dict[str, Any]:
        """Fit (rank 0) or load the cohort's normalisation, stain template and model pool."""
        path = self.output_dir / "cohort.json"
        rank, _ = dist_context()
        settings = {"pool_patches": self.pool_patches, "seed": self.seed, "slides": sorted(g.slide_id for g in grids),
                    "label_map": self.label_map, "num_classes": self.num_classes,
                    "annotations": str(self.annotations) if self.annotations else None,
                    "annotation_labels": self.annotation_labels}
        if rank == 0:
            old = json.loads(path.read_text()) if path.is_file() else {}
            if old.get("settings") != settings or not self._sample_path.is_file():
                images, labels = self._cohort_sample(grids)
                num_classes = self.num_classes or max(2, int(labels.max()) + 1)
                if int(labels.max()) >= num_classes:
                    raise BagError(f"slide label {int(labels.max())} is not below num_classes={num_classes}.")
                mean = images.mean(dim=(0, 2, 3)).tolist()
                std = images.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
                template = StainTemplate.fit_dataset(images, source="cohort sample")
                template.save(self.output_dir / "stain_template.json")
                atomic_torch_save({"images": images, "labels": labels}, self._sample_path)
                atomic_write_json({"settings": settings, "mean": mean, "std": std, "num_classes": num_classes,
                                   "n_sample": len(images), "stain_template": "stain_template.json"}, path)
        barrier()
        cohort = json.loads(path.read_text())
        cohort["class_names"] = self._class_names(cohort["num_classes"])
        data = torch.load(self._sample_path, weights_only=True)
        sample = self._dataset(data["images"], data["labels"], cohort, "cohort")
        cohort["pool"] = self._pool(sample) if self._uses_pool() else None
        if self.grouping == "cluster":
            self._group_encoder = self._cohort_group_encoder(data, cohort, settings)
        cohort["options"] = self._resolved_options(sample)
        cohort["settings"] = self._settings(cohort)  # what every slide's fingerprint shares, computed once
        return cohort

    def _cohort_group_encoder(self, data: dict[str, torch.Tensor], cohort: dict[str, Any], settings: dict[str, Any]
                              ) -> Any:
        """The grouping encoder (:mod:`mil.grouping`): trained on the cohort sample with slide labels by rank 0 and
        cached in ``cache/grouping_encoder.pt``, or the frozen encoder the options name."""
        opts = self.grouping_options
        images = data["images"]
        if opts.encoder != "cohort":
            return build_encoder(opts, images.shape[1], images.shape[-1], self.device)
        path = self.output_dir / "cache" / "grouping_encoder.pt"
        key = _digest({"cohort": settings, "grouping": opts.to_dict(), "n_sample": len(images)})
        rank, _ = dist_context()
        cached = torch.load(path, weights_only=True) if rank == 0 and path.is_file() else None
        if rank == 0 and (cached is None or cached.get("key") != key):  # the other ranks wait and load it
            encoder = train_cohort_encoder(images, data["labels"], cohort["num_classes"], opts, self.seed, self.device)
            cached = {"key": key, "state_dict": {k: v.cpu() for k, v in encoder.state_dict().items()},
                      "mean": encoder.mean.flatten().tolist(), "std": encoder.std.flatten().tolist()}
            atomic_torch_save(cached, path)
        barrier()
        cached = torch.load(path, weights_only=True)
        net = cohort_network(images.shape[1], images.shape[-1], cohort["num_classes"], int(opts.encoder_width))
        encoder = CohortEncoder(net, cached["mean"], cached["std"])
        encoder.load_state_dict(cached["state_dict"])
        return encoder.to(self.device).eval()

    def _class_names(self, num_classes: int) -> list[str]:
        names = [f"class {c}" for c in range(num_classes)]
        for text, c in (self.label_map or {}).items():
            if 0 <= int(c) < num_classes:
                names[int(c)] = str(text)
        return names

    def _uses_pool(self) -> bool:
        return self.method == "histodd" and to_bool(self.method_options.get("model_augment", True))

    def _options(self) -> dict[str, Any]:
        opts = dict(self.method_options)
        if self.method == "histodd":
            opts.setdefault("stain_template", str(self.output_dir / "stain_template.json"))
            opts.setdefault("pool_dir", str(self.output_dir / "cache"))
        return opts

    @staticmethod
    def _normalise(images: torch.Tensor, cohort: dict[str, Any]) -> torch.Tensor:
        """[0, 1] patches in the cohort's normalised units."""
        mean = torch.tensor(cohort["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(cohort["std"]).view(1, -1, 1, 1)
        return (images - mean) / std

    def _dataset(self, images: torch.Tensor, labels: torch.Tensor, cohort: dict[str, Any], name: str) -> RealDataset:
        return RealDataset(images=self._normalise(images, cohort), labels=labels, num_classes=cohort["num_classes"],
                           class_names=cohort["class_names"], mean=cohort["mean"], std=cohort["std"], name=name,
                           source=str(self.slides))

    def _distiller(self, real: RealDataset, ipc: int, seed: int) -> Distiller:
        cfg = DistillConfig(ipc=ipc, arch=self.arch, preset=self.preset, seed=seed, options=self._options(),
                            allow_absent_classes=True)
        return self.method_cls(real, cfg, self.device)

    def _resolved_options(self, sample: RealDataset) -> dict[str, Any]:
        """The options a slide's distiller runs with (preset and ipc defaults filled in), so that spelling out a
        default value does not make a rerun redo finished slides."""
        try:
            return dict(getattr(self._distiller(sample, self.ipc, self.seed), "options", self._options()))
        except ValueError:  # a class of the sample holds fewer than ipc patches
            return self._options()

    def _pool(self, real: RealDataset) -> Any:
        """Histo-DD's model pool trained on the cohort sample: rank 0 trains and caches it, the others load it."""
        rank, _ = dist_context()
        pool = None
        if rank == 0:
            with torch.random.fork_rng(devices=[]):
                pool = self._distiller(real, 1, self.seed).build_pool()
        barrier()
        if pool is None:
            with torch.random.fork_rng(devices=[]):
                pool = self._distiller(real, 1, self.seed).build_pool()  # loads rank 0's cached networks
        return pool

    # ------------------------------------------------------------------ one slide
    def _settings(self, cohort: dict[str, Any]) -> dict[str, Any]:
        # storage enters only when not the default, so bags written before the option keep their fingerprints.
        extra = {} if self.storage == "float32" else {"storage": self.storage}
        if self.grouping != "slide_label":
            extra["grouping"] = {"mode": self.grouping, **self.grouping_options.to_dict()}
        return {**extra, "method": self.method, "ipc": self.ipc, "arch": self.arch, "preset": self.preset.name,
                "preset_fields": _digest(dataclasses.asdict(self.preset)), "options": cohort["options"],
                "seed": self.seed,
                "max_patches": self.max_patches, "mean": cohort["mean"], "std": cohort["std"],
                "num_classes": cohort["num_classes"], "pool": cohort["pool"].key if cohort["pool"] else None,
                "template": _digest(json.loads((self.output_dir / "stain_template.json").read_text()))}

    def process(self, grid: PatchGrid, cohort: dict[str, Any]) -> dict[str, Any]:
        """Distil one slide, write its bag, PNG and status; return its manifest row (never raises for a bad slide)."""
        start = time.perf_counter()
        row: dict[str, Any] = {"slide_id": grid.slide_id, "label": grid.label, "n_patches": 0, "n_synthetic": 0,
                               "status": FAILED, "seconds": 0.0, "error": "", "split": grid.split or ""}
        path = bag_path(self.output_dir, grid.slide_id)
        fingerprint = ""
        try:
            label = grid_label(grid, self.label_map)
            row["label"] = label
            sub = subsample_grid(grid, self.max_patches, self.seed)
            annotation = self._annotation(sub)
            settings = dict(cohort["settings"])
            if annotation is not None:  # absent for unannotated slides: their fingerprints stay those of before
                settings["annotation"] = _file_digest(annotation)
            fingerprint = bag_fingerprint(sub, label, settings)
            old = read_status(self.output_dir, grid.slide_id)
            if old and old.get("fingerprint") == fingerprint and old.get("status") == DONE and bag_file_intact(path):
                return {k: v for k, v in old.items() if k != "fingerprint"}
            real_bag = read_real_bag(sub, label, self.backend or grid.info.backend, 64, 0, {})
            if len(real_bag) == 0:
                raise BagError(f"slide '{grid.slide_id}' has no patch to distil.")
            bag = self._distil(real_bag, grid, self._patch_labels(sub, label), label, cohort, fingerprint)
            bag = bag.compact(self.storage)
            save_bag(bag, path)
            self._png(bag, real_bag, cohort)
            atomic_write_json(slide_card(grid.slide_id, bag.pixels(), real_bag.pixels(), seed=self.seed),
                              slide_card_path(self.output_dir, grid.slide_id))
            row.update(n_patches=len(real_bag), n_synthetic=len(bag), status=DONE)
        except Exception as e:  # one bad slide must not stop the cohort: record why and go on
            row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
            path.unlink(missing_ok=True)
            png_path(self.output_dir, grid.slide_id).unlink(missing_ok=True)
            slide_card_path(self.output_dir, grid.slide_id).unlink(missing_ok=True)
            logger.warning("synthetic bag of %s failed: %s", grid.slide_id, row["error"])
        row["seconds"] = round(time.perf_counter() - start, 3)
        write_status(self.output_dir, row, fingerprint if row["status"] == DONE else "")
        return row

    def _distil(self, real_bag: Bag, grid: PatchGrid, labels: torch.Tensor, label: int, cohort: dict[str, Any],
                fingerprint: str) -> Bag:
        seed = slide_seed(self.seed, grid.slide_id)
        if int(labels.max()) >= cohort["num_classes"]:
            raise BagError(f"slide '{grid.slide_id}': patch class {int(labels.max())} is not below num_classes="
                           f"{cohort['num_classes']} (check annotation_labels).")
        smallest = int(torch.bincount(labels)[torch.unique(labels)].min())
        ipc = min(self.ipc, smallest)
        if ipc < self.ipc:
            logger.warning("slide %s has %d patches of its smallest class, fewer than ipc=%d: ipc %d for this slide",
                           grid.slide_id, smallest, self.ipc, ipc)
        real = self._dataset(real_bag.patches.float() / 255.0, labels, cohort, grid.slide_id)
        annotated = self._annotation(grid) is not None
        groups = self._groups(real_bag, seed) if self.grouping == "cluster" and not annotated else None
        if groups is None or groups.k == 1:
            syn, n, losses = self._distil_set(real, ipc, seed, cohort, grid.slide_id)
            extra: dict[str, Any] = {} if groups is None else {"groups": [0] * len(syn.labels),
                                                               "group_sizes": groups.sizes}
        else:
            syn, n, losses, extra = self._distil_groups(real, groups, seed, cohort, grid.slide_id)
            ipc = int(sum(extra["group_ipc"]))
        meta = {"method": self.method, "ipc": ipc, "ipc_requested": self.ipc, "preset": self.preset.name,
                "arch": self.arch, "seed": seed, "iterations": n, "final_losses": losses,
                "slide_path": grid.slide_path, "n_real_patches": len(real_bag), "fingerprint": fingerprint,
                "patch_size": int(grid.spec.patch_size), "level": int(grid.spec.level), "mpp": grid.spec.mpp,
                "mean": cohort["mean"], "std": cohort["std"], "split": grid.split,
                "patch_classes": syn.labels.tolist() if syn.labels.ndim == 1 else None,
                "annotated": annotated, **extra}
        return Bag.from_synthetic_set(syn, grid.slide_id, label, meta=meta)

    def _distil_set(self, real: RealDataset, ipc: int, seed: int, cohort: dict[str, Any], desc: str
                    ) -> tuple[SyntheticSet, int, dict[str, float]]:
        """Distil ``real`` into ``ipc`` patches per class present: the set, its iterations and final losses."""
        seed_everything(seed)
        distiller = self._distiller(real, ipc, seed)
        if cohort["pool"] is not None:
            distiller.pool = cohort["pool"]
        distiller.init_synthetic()
        n = int(distiller.num_iterations)
        losses: dict[str, float] = {}
        bar = tqdm(range(n), desc=f"{self.method} {desc}", leave=False, disable=None if self.progress and n else True)
        for it in bar:
            losses = distiller.step(it)
            bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()})
        return distiller.synthetic_set(), n, losses

    def _groups(self, real_bag: Bag, seed: int) -> Any:
        """The slide's annotation-free groups (:func:`mil.grouping.group_patches`) in the frozen encoder's space."""
        features = embed_patches(real_bag.patches, self._group_encoder, self.grouping_options.batch_size)
        return group_patches(features, self.grouping_options, seed)

    def _distil_groups(self, real: RealDataset, groups: Any, seed: int, cohort: dict[str, Any], slide_id: str
                       ) -> tuple[SyntheticSet, int, dict[str, float], dict[str, Any]]:
        """Distil every group on its own (an equal share of ``ipc`` each, :func:`mil.grouping.split_budget`) and
        concatenate the sets; the bag's meta says which group each synthetic patch stands for and how large it was."""
        budgets = split_budget(self.ipc, groups.sizes)
        images, labels, group_of, init, losses, n = [], [], [], [], {}, 0
        for g, ipc_g in enumerate(budgets):
            index = torch.as_tensor(np.flatnonzero(groups.labels == g))
            part = dataclasses.replace(real, images=real.images[index], labels=real.labels[index],
                                       name=f"{slide_id} group {g}")
            syn, n, losses = self._distil_set(part, ipc_g, seed + 7919 * g, cohort, f"{slide_id} g{g}")
            images.append(syn.images)
            labels.append(syn.labels)
            group_of += [g] * len(syn.labels)
            init += [int(index[i]) for i in syn.meta.get("init_indices") or []]  # slide indices, for the PNG
        meta = {**syn.meta, "init_indices": init}
        extra = {"groups": group_of, "group_sizes": groups.sizes, "group_ipc": budgets,
                 "group_silhouette": groups.silhouette}
        return SyntheticSet(torch.cat(images), torch.cat(labels), meta=meta), n, losses, extra

    def _png(self, bag: Bag, real_bag: Bag, cohort: dict[str, Any]) -> None:
        """Three rows: the synthetic bag, the real patches it started from (when the method starts from real
        patches), and other real patches of the slide (a seeded draw) — what distillation changed, and what the
        slide looks like."""
        start = [int(i) for i in bag.meta.get("init_indices") or []]
        gen = torch.Generator().manual_seed(slide_seed(self.seed, bag.slide_id))
        others = [int(i) for i in torch.randperm(len(real_bag), generator=gen) if int(i) not in set(start)]
        # pixels(): display units whatever the storage (uint8 bags hold 0..255), then the cohort's normalisation
        rows = [(f"synthetic, label {bag.label}", self._normalise(bag.pixels(), cohort))]
        if start:
            rows.append(("real start", self._normalise(real_bag.patches[start].float() / 255.0, cohort)))
        if others and self.png_real > 0:
            rows.append(("other real", self._normalise(real_bag.patches[others[: self.png_real]].float() / 255.0,
                                                       cohort)))
        images = torch.cat([x for _, x in rows])
        labels = torch.cat([torch.full((len(x),), r, dtype=torch.long) for r, (_, x) in enumerate(rows)])
        view = SyntheticSet(images, labels, meta={"mean": cohort["mean"], "std": cohort["std"],
                                                  "class_names": [name for name, _ in rows]})
        path = png_path(self.output_dir, bag.slide_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        view.to_png(path, max_per_class=max(self.ipc, self.png_real))

    # ------------------------------------------------------------------ run
    def run(self) -> BagDirectory:
        """Tile if needed, fit the cohort's shared parts, distil this rank's slides, merge ``manifest.csv``.

        The output directory is locked for the run and gets a ``status.json``; a failed run's ``manifest.csv`` is
        moved to ``failed/`` (see :func:`monai_distill.runs.guarded_run`).
        """
        refuse_multiprocess_without_config("wsi_synthetic_bags")
        with guarded_run(self.output_dir, ("manifest.csv",), {"workflow": "wsi_synthetic_bags"}):
            return self._run()

    def _run(self) -> BagDirectory:
        check_output_dir(self.output_dir)
        grids, failed_tiling = self._grids()
        cohort = self._prepare_cohort(grids)
        logger.info("synthetic bags: %d slide(s), method %s, ipc %d, preset %s, device %s -> %s", len(grids),
                    self.method, self.ipc, self.preset.name, self.device, self.output_dir)
        bags = run_cohort(grids, self.output_dir, lambda g: self.process(g, cohort), "synthetic bags",
                          self.progress, extra_rows=failed_tiling)
        if dist_context()[0] == 0:
            write_cohort_card(self.output_dir, self._settings(cohort), [g.slide_path for g in grids],
                              {"device": str(self.device), "seed": self.seed})
        return bags
