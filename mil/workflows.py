"""What the ``mil_slide_classification`` bundle runs: train a MIL head on bags, evaluate it on real held-out slides.

:class:`MILTrainWorkflow` (``train.json``): bags (real or synthetic, one directory) -> frozen-encoder features
(cached) -> one head trained with early stopping on a validation split of the training bags -> evaluation on the
real bags of held-out slides. :class:`MILEvaluateWorkflow` (``evaluate.json``): a trained head checkpoint evaluated
on real held-out slides with the encoder recorded in the checkpoint.

Held-out slides (``test_slides``) may be given as:

- a bag directory (``DIR/<slide_id>.pt`` or ``DIR/bags/``): used as it is;
- a tiling output directory (``coords/``, from the ``wsi_tiling`` bundle): its patches become real bags;
- a directory of slides or a CSV ``slide_path,label[,split][,slide_id]``: tiled first (``wsi``), then as above.

``test_split`` keeps only the slides of that split (the CSV's ``split`` column). Under ``torchrun`` with
``multi_gpu_train.json``, tiling, real-bag reading and feature extraction are sharded across ranks (the costly part);
rank 0 then trains and evaluates the head, which is small.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Subset

from monai_distill.checks import OptionError, option_bool, option_choice, option_dict, option_float, option_int
from monai_distill.components import (
    RegistryNetwork,
    as_factory,
    check_optimizer,
    component_label,
    component_spec,
    component_target,
    registry_parts,
)
from monai_distill.networks import NETWORKS
from monai_distill.runs import guarded_run, refuse_multiprocess_without_config
from monai_distill.utils import atomic_path, atomic_write_json, check_output_dir, resolve_device
from wsi.components import tiling_components
from wsi.datasets import load_grids
from wsi.distributed import barrier, dist_context, shard
from wsi.reader import BACKENDS
from wsi.slides import check_slide_files, list_slides
from wsi.workflows import TilingWorkflow, tiling_config

from .bags import Bag, BagDirectory, BagError
from .features import EncoderConfig, FeatureExtractor
from .heads import MIL_HEADS, RegistryHead, get_mil_head
from .heatmap import save_attention_heatmap
from .real_bags import label_index, make_real_bags, option_label_map
from .train import MILTrainer, Predictions, TrainConfig, TrainResult, build_head, torch_threads

__all__ = ["MILEvaluateWorkflow", "MILInferenceWorkflow", "MILTrainWorkflow", "real_test_bags", "stratified_split"]

logger = logging.getLogger(__name__)

# What a finished run leaves; a failed run's copies are moved to output_dir/failed/ (monai_distill.runs).
TRAIN_ARTEFACTS = ("model.pt", "metrics.json", "predictions.csv", "history.csv", "heatmaps")
EVALUATE_ARTEFACTS = ("metrics.json", "predictions.csv", "checkpoint_info.json", "heatmaps")
INFERENCE_ARTEFACTS = ("predictions.csv", "inference.json", "checkpoint_info.json", "heatmaps")


def _encoder_definition(factory: Any) -> dict[str, Any]:
    """``encoder_def`` as the JSON definition the checkpoint and the feature-cache key record (and evaluation builds
    again), refusing arguments that JSON cannot hold."""
    spec = component_spec(factory)
    keywords = dict(getattr(factory, "keywords", None) or {})
    try:
        json.dumps(keywords)
    except TypeError:
        raise OptionError(f"--encoder_def {spec['_target_']}: its arguments {keywords} must be JSON values (numbers, "
                          "text, lists, dicts): the definition is recorded in model.pt and the feature-cache key."
                          ) from None
    return spec


def _encoder_config(name: Any, options: Any, checkpoint: Any, seed: Any, input_size: Any,
                    definition: dict[str, Any] | None = None) -> EncoderConfig:
    """The frozen encoder of the bundle options, each checked (name, options, checkpoint file, seed, size); with a
    ``definition`` (``encoder_def``) the name is its label and ``encoder_options`` do not apply."""
    if definition is not None:
        name, options = name, {}
    name = None if name in (None, "", "none", "None") else str(name).lower()
    checkpoint = None if checkpoint in (None, "") else str(checkpoint)
    if name is None and checkpoint is None:
        raise OptionError("--encoder must be a network name (" + ", ".join(NETWORKS.names()) + ") or, with no name, "
                          "--encoder_checkpoint a whole program (.pt2 or TorchScript); got neither.")
    if name is not None and name not in NETWORKS and definition is None:
        raise OptionError(f"--encoder must be one of {', '.join(NETWORKS.names())}; got {name!r}.")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise OptionError(f"--encoder_checkpoint: file '{checkpoint}' does not exist.")
    enc: dict[str, Any] = {"name": name, "checkpoint": checkpoint, "seed": option_int(seed, "encoder_seed"),
                           "input_size": option_int(input_size, "input_size", minimum=8, allow_none=True)}
    if options is not None:
        enc["options"] = option_dict(options, "encoder_options")
    if definition is not None:
        enc["definition"] = definition
    return EncoderConfig.from_any(enc)


def _is_bag_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "bags").is_dir() or any(path.glob("*.pt")))


def real_test_bags(
    test_slides: str | os.PathLike,
    work_dir: str | os.PathLike,
    split: str | None = None,
    max_patches: int | None = None,
    seed: int = 0,
    label_map: dict[str, int] | None = None,
    tiling: dict[str, Any] | None = None,
    progress: bool = True,
    missing_label: int | None = None,
) -> Sequence[Bag]:
    """The real bags of the held-out slides (see the module doc for the accepted inputs), loaded lazily.

    Args:
        test_slides: bag directory, tiling output directory, slide directory or slide CSV.
        work_dir: where tiling (``tiling/``) and real bags (``bags/``, ``manifest.csv``) are written when needed.
        split: keep only slides of this split.
        max_patches: at most this many patches per slide (random, seeded).
        seed: seed of that draw.
        label_map: text label -> class index.
        tiling: :class:`wsi.workflows.TilingWorkflow` arguments for slide inputs (patch_size, level, mpp, ...).
        progress: progress bars.
        missing_label: class index given to slides without a label (inference); ``None``: they fail.

    Raises:
        FileNotFoundError: ``test_slides`` does not exist.
        BagError: no bag is left.
    """
    path = Path(test_slides)
    if not path.exists():
        raise FileNotFoundError(
            f"test_slides '{path}' does not exist (expected a bag directory, a tiling output directory, a directory "
            "of slides or a CSV slide_path,label[,split][,slide_id])."
        )
    work = Path(work_dir)
    if _is_bag_dir(path):
        bags: Sequence[Bag] = BagDirectory(path)
        if split is not None:  # reads each bag once for its split; the kept ones are loaded again when used
            bags = Subset(bags, [i for i, b in enumerate(bags) if b.meta.get("split") == split])
    else:
        if path.is_dir() and (path / "coords").is_dir():
            tiling_dir = path
        else:
            records = list_slides(path)
            if split is not None:
                records = [r for r in records if r.split == split]
                if not records:
                    raise BagError(f"no slide of split '{split}' in '{path}'.")
            tiling_dir = work / "tiling"
            TilingWorkflow(records, tiling_dir, progress=progress, **(tiling or {})).run()
        bags = make_real_bags(tiling_dir, work, split=split, max_patches=max_patches, seed=seed, label_map=label_map,
                              progress=progress, missing_label=missing_label)
    if len(bags) == 0:
        raise BagError(f"no real test bag from '{path}' (split={split!r}).")
    return bags


@dataclass
class _Scan:
    """What a run needs to know about a bag set or slide list before any heavy work (read once, kept small)."""

    where: str
    slide_ids: list[str]
    labels: list[int]
    patch_shape: tuple[int, int, int] | None = None  # of the first bag with patches (or the tiling's patches)
    feature_dims: dict[str, int] = field(default_factory=dict)  # slide_id -> F of feature-only bags
    meta: dict[str, Any] = field(default_factory=dict)  # of the first bag
    splits: list[str | None] = field(default_factory=list)  # meta["split"] of each bag


def _scan_bags(bags: Sequence[Bag], where: str) -> _Scan:
    """Read every bag once (each is validated as it loads; a damaged file raises naming it) and collect ids, labels,
    the patch shape and the feature sizes; bags of different channel counts or feature sizes are refused."""
    scan = _Scan(where, [], [])
    first_patches = ""
    for i in range(len(bags)):
        bag = bags[i]
        if i == 0:
            scan.meta = dict(bag.meta)
        scan.slide_ids.append(bag.slide_id)
        scan.labels.append(int(bag.label))
        scan.splits.append(bag.meta.get("split"))
        if bag.patch_shape is None:
            scan.feature_dims[bag.slide_id] = int(bag.features.shape[1])  # type: ignore[union-attr]
        elif scan.patch_shape is None:
            scan.patch_shape, first_patches = bag.patch_shape, bag.slide_id
        elif bag.patch_shape[0] != scan.patch_shape[0]:
            raise BagError(f"{where}: bag '{bag.slide_id}' has {bag.patch_shape[0]}-channel patches but bag "
                           f"'{first_patches}' has {scan.patch_shape[0]}; every bag needs the same channels.")
    dims = sorted(set(scan.feature_dims.values()))
    if len(dims) > 1:
        by_dim = {d: next(s for s, f in scan.feature_dims.items() if f == d) for d in dims}
        sizes = ", ".join(f"{d} (e.g. '{s}')" for d, s in by_dim.items())
        raise BagError(f"{where}: feature-only bags have different feature sizes {sizes}; they must come from one "
                       "encoder.")
    return scan


def _check_labels(scan: _Scan, num_classes: int, source: str) -> None:
    """Every label of ``scan`` is a class of a ``num_classes`` head (whose count comes from ``source``)."""
    for sid, label in zip(scan.slide_ids, scan.labels):
        if label >= num_classes:
            raise BagError(f"{scan.where}: slide '{sid}' has label {label}, but the head has {num_classes} classes "
                           f"(0..{num_classes - 1}, from {source}); fix the label or the class count.")


def _check_feature_dims(scans: Sequence[_Scan], encoder_dim: int | None, encoder: str) -> None:
    """Feature-only bags hold features of the size the encoder makes (or, without an encoder, all of one size)."""
    expected, origin = encoder_dim, encoder
    for scan in scans:
        for sid, dim in scan.feature_dims.items():
            if expected is None:
                expected, origin = dim, f"bag '{sid}' of {scan.where}"
            elif dim != expected:
                raise BagError(
                    f"{scan.where}: bag '{sid}' holds {dim} features per instance but {origin} gives {expected}; "
                    "features of different encoders cannot be mixed (store patches in the bags, or use the encoder "
                    "that made these features)."
                )


def _slide_id(bags: Sequence[Bag], i: int) -> str:
    """Slide id of bag ``i`` without loading it where the container knows it (bag directories and subsets)."""
    if isinstance(bags, BagDirectory):
        return bags.slide_ids[i]
    if isinstance(bags, Subset) and isinstance(bags.dataset, BagDirectory):
        return bags.dataset.slide_ids[bags.indices[i]]
    return bags[i].slide_id


def stratified_split(bags: Sequence[Bag], fraction: float, seed: int) -> tuple[list[Bag], list[Bag]]:
    """Split off about ``fraction`` of each class's bags for validation (at least one per class, and at least one
    left for training). Classes with fewer than two bags stay in training; with no class able to give a bag, or
    ``fraction`` <= 0, the validation list is empty."""
    if fraction <= 0:
        return list(bags), []
    rng = np.random.default_rng(seed)
    labels = np.array([b.label for b in bags])
    val_idx: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            logger.warning("class %d has %d training bag(s): none held out for validation.", c, len(idx))
            continue
        k = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        val_idx.extend(rng.choice(idx, size=k, replace=False).tolist())
    chosen = set(val_idx)
    if len({bags[i].label for i in chosen}) < 2:  # a one-class validation set has no AUC to stop on
        return list(bags), []
    return [b for i, b in enumerate(bags) if i not in chosen], [bags[i] for i in sorted(chosen)]


def _json_clean(value: Any) -> Any:
    """NaN/inf -> None so that metrics.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    return value


class _MILWorkflowBase:
    """Options and steps shared by training and evaluation: held-out slides, features, outputs."""

    # Class index of held-out slides without a label; None: a label is required (training and evaluation need one).
    missing_label: int | None = None

    def __init__(
        self,
        test_slides: str | os.PathLike,
        output_dir: str | os.PathLike,
        feature_cache: str | os.PathLike | None = None,
        feature_batch_size: int = 64,
        device: str | None = None,
        amp: bool = True,
        num_threads: int | None = None,
        seed: int = 0,
        test_split: str | None = None,
        max_test_patches: int | None = None,
        test_bags_dir: str | os.PathLike | None = None,
        patch_size: int | None = None,
        level: int | None = None,
        mpp: float | None = None,
        tissue_threshold: float = 0.5,
        backend: str = "openslide",
        label_map: dict[str, int] | None = None,
        n_heatmaps: int = 4,
        progress: bool = True,
        reader_def: Any = None,
        masker_def: Any = None,
    ) -> None:
        # Every option is checked here, before any bag or slide is read (messages name the option).
        self.test_slides = test_slides
        self.output_dir = Path(output_dir)
        self.feature_cache = Path(feature_cache) if feature_cache else self.output_dir / "features"
        self.feature_batch_size: int = option_int(feature_batch_size, "feature_batch_size", minimum=1)  # type: ignore[assignment]
        self.device = None if device in (None, "", "auto") else str(device)
        try:
            resolve_device(self.device)
        except (RuntimeError, ValueError) as e:
            raise OptionError(f"--device must be cpu, cuda or cuda:N on a machine that has it; got {self.device!r} "
                              f"({e}).") from e
        self.amp = option_bool(amp, "amp")
        self.num_threads = option_int(num_threads, "num_threads", minimum=0, allow_none=True) or None
        self.seed: int = option_int(seed, "seed")  # type: ignore[assignment]
        self.test_split = None if test_split in (None, "") else str(test_split)
        self.max_test_patches = option_int(max_test_patches, "max_test_patches", minimum=0, allow_none=True) or None
        self.test_bags_dir = Path(test_bags_dir) if test_bags_dir else self.output_dir / "test_bags"
        # Tiling options of held-out slides: None means "as the training patches" (see _tiling_options).
        self.patch_size = option_int(patch_size, "patch_size", minimum=1, allow_none=True)
        self.level = option_int(level, "level", minimum=0, allow_none=True)
        self.mpp = option_float(mpp, "mpp", minimum=0, min_inclusive=False, allow_none=True)
        if self.level is not None and self.mpp is not None:
            raise OptionError(f"--level and --mpp: give one of them, found level {self.level} and mpp {self.mpp:g}.")
        self.tissue_threshold: float = option_float(tissue_threshold, "tissue_threshold", 0.0, 1.0)  # type: ignore[assignment]
        self.backend: str = option_choice(backend, "backend", BACKENDS)  # type: ignore[assignment]
        # The slide reader and tissue masker of held-out slides (the wsi_tiling bundle's entries): a definition that
        # cannot be imported or built fails now, not after training.
        self.tiling_defs = {k: v for k, v in (("reader_def", reader_def), ("masker_def", masker_def)) if v is not None}
        tiling_components(tiling_config(backend=self.backend), self.output_dir, **self.tiling_defs)
        self.label_map = option_label_map(label_map)
        self.n_heatmaps: int = option_int(n_heatmaps, "n_heatmaps", minimum=0)  # type: ignore[assignment]
        self.progress = option_bool(progress, "progress")

    def _tiling_options(self, reference: dict[str, Any]) -> dict[str, Any]:
        """Tiling settings for held-out slides: explicit options first, else those of the training patches
        (``reference``: patch size, level, mpp), so test patches look like the training ones."""
        level, mpp = self.level, self.mpp
        if level is None and mpp is None:
            level = reference.get("level")
            mpp = reference.get("mpp") if level is None else None
        return {"patch_size": self.patch_size or reference.get("patch_size") or 256, "level": level, "mpp": mpp,
                "tissue_threshold": self.tissue_threshold, "backend": self.backend, **self.tiling_defs}

    def _test_bags(self, reference: dict[str, Any]) -> Sequence[Bag]:
        return real_test_bags(self.test_slides, self.test_bags_dir, self.test_split, self.max_test_patches, self.seed,
                              self.label_map, self._tiling_options(reference), self.progress, self.missing_label)

    def _scan_test(self, reference: dict[str, Any]) -> _Scan:
        """Ids, labels and patch size of the held-out slides, from the bags, grids or slide list alone (nothing is
        tiled or encoded yet)."""
        path = Path(self.test_slides)
        where = f"--test_slides '{path}'"
        if not path.exists():
            raise FileNotFoundError(
                f"{where} does not exist (expected a bag directory, a tiling output directory, a directory of slides "
                "or a CSV slide_path,label[,split][,slide_id])."
            )
        split = self.test_split
        if _is_bag_dir(path):
            scan = _scan_bags(BagDirectory(path), where)
            if split is not None:
                keep = [i for i, s in enumerate(scan.splits) if s == split]
                ids = [scan.slide_ids[i] for i in keep]
                scan = _Scan(where, ids, [scan.labels[i] for i in keep], scan.patch_shape,
                             {k: v for k, v in scan.feature_dims.items() if k in set(ids)}, scan.meta)
        elif path.is_dir() and (path / "coords").is_dir():
            grids = [g for g in load_grids(path) if split is None or g.split == split]
            labels = [label_index(g.label, g.slide_id, self.label_map, f"in '{path}'", self.missing_label)
                      for g in grids]
            size = int(grids[0].spec.patch_size) if grids else 0
            scan = _Scan(where, [g.slide_id for g in grids], labels, (3, size, size))
        else:
            records = list_slides(path)
            check_slide_files(records, path, "test_slides")
            records = [r for r in records if split is None or r.split == split]
            labels = [label_index(r.label, r.slide_id, self.label_map, f"in '{path}'", self.missing_label)
                      for r in records]
            size = int(self._tiling_options(reference)["patch_size"])
            scan = _Scan(where, [r.slide_id for r in records], labels, (3, size, size))
        if not scan.slide_ids:
            raise BagError(f"--test_split {split!r}: no slide of that split in {where}.")
        return scan

    def _setup_encoder(self, extractor: FeatureExtractor, patch_shape: tuple[int, int, int]) -> None:
        """Build the frozen encoder now, so that bad encoder settings fail before any slide is tiled."""
        try:
            extractor.setup(patch_shape[0], patch_shape[-1])
        except (TypeError, ValueError, KeyError, RuntimeError) as e:
            cfg = extractor.config
            which = (f"--encoder_def {cfg.definition['_target_']}" if cfg.definition else
                     f"--encoder {cfg.name} --encoder_options {cfg.options}")
            raise OptionError(f"{which}: cannot build the encoder for {patch_shape[0]}-channel {patch_shape[-1]} px "
                              f"patches: {e}") from e

    def _extractor(self, encoder: EncoderConfig) -> FeatureExtractor:
        return FeatureExtractor(encoder, self.feature_cache, self.feature_batch_size, self.device, self.amp,
                                self.progress)

    def _features(self, extractor: FeatureExtractor, groups: dict[str, Sequence[Bag]]) -> dict[str, list[Bag]] | None:
        """Feature bags of each group. Under torchrun every rank encodes its share into the cache first; only rank 0
        goes on (the others get ``None``)."""
        rank, world = dist_context()
        if world > 1:
            for name, bags in groups.items():
                mine = shard(range(len(bags)), rank, world)
                extractor.extract((bags[i] for i in mine), desc=f"{name} features (rank {rank})")
            barrier()
            if rank != 0:
                return None
        return {name: extractor.extract(bags, desc=f"{name} features") for name, bags in groups.items()}

    def _write_outputs(self, trainer: MILTrainer, test: list[Bag], metrics: dict[str, Any]) -> dict[str, Any]:
        """Predictions CSV, heatmaps and metrics.json; returns the metrics."""
        preds = trainer.predict(test)
        preds.to_csv(self.output_dir / "predictions.csv")
        m = preds.metrics()
        if len(set(preds.labels.tolist())) < 2:
            logger.warning("the %d held-out slide(s) all have label %d: AUC is undefined (null in metrics.json).",
                           len(test), int(preds.labels[0]))
        metrics = {"status": "finished", "model": trainer.model_name, "auc": m["auc"], "acc": m["acc"],
                   "balanced_acc": m["balanced_acc"], "threshold": trainer.threshold,
                   "acc_at_0.5": m.get("acc_at_0.5", m["acc"]),
                   "balanced_acc_at_0.5": m.get("balanced_acc_at_0.5", m["balanced_acc"]),
                   **metrics, "num_classes": trainer.num_classes,
                   "test_loss": m["loss"], "n_test_bags": len(test), "heatmaps": self._heatmaps(test, preds)}
        metrics = _json_clean(metrics)
        atomic_write_json(metrics, self.output_dir / "metrics.json")
        logger.info("%s: test AUC %s, acc %.3f, balanced acc %.3f -> %s", trainer.model_name, metrics["auc"],
                    m["acc"], m["balanced_acc"], self.output_dir)
        return metrics

    def _heatmaps(self, test: list[Bag], preds: Predictions) -> list[str]:
        """Up to ``n_heatmaps`` test slides, taking classes in turn, drawn to ``heatmaps/<slide_id>.png``."""
        by_class: dict[int, list[int]] = {}
        for i, b in enumerate(test):
            if b.coords is not None:
                by_class.setdefault(b.label, []).append(i)
        chosen: list[int] = []
        while len(chosen) < self.n_heatmaps and any(by_class.values()):
            for idx in by_class.values():
                if idx and len(chosen) < self.n_heatmaps:
                    chosen.append(idx.pop(0))
        written = []
        for i in chosen:
            path = self.output_dir / "heatmaps" / f"{test[i].slide_id}.png"
            try:
                save_attention_heatmap(test[i], preds.instance_scores[i], path)
                written.append(str(path.relative_to(self.output_dir)))
            except Exception as e:  # a heatmap is a picture, not a result: log and go on
                logger.warning("heatmap of %s failed: %s", test[i].slide_id, e)
        return written


class MILTrainWorkflow(_MILWorkflowBase):
    """Train a MIL head on a bag directory and evaluate it on real held-out slides.

    Outputs in ``output_dir``: ``metrics.json`` (model, auc, acc, balanced_acc, epochs, seconds_per_epoch, device,
    and more), ``predictions.csv``, ``history.csv``, ``model.pt`` (head + encoder settings, for ``evaluate.json``),
    ``heatmaps/<slide_id>.png``, ``test_bags/`` (real bags of the held-out slides, when made here), ``features/``
    (the feature cache unless ``feature_cache`` points elsewhere).

    Args:
        train_bags: bag directory (real or synthetic bags; ``DIR/<slide_id>.pt`` or ``DIR/bags/``, optional manifest).
        test_slides: held-out slides (see the module doc).
        output_dir: results directory.
        model: head name: clam_sb, clam_mb, dsmil, transmil, abmil, mean, max (shortcut of ``head_def``).
        head_options: hyper-parameters of the registry head ``model``.
        encoder: factory network name of the frozen encoder (``None`` with a TorchScript ``encoder_checkpoint``;
            shortcut of ``encoder_def``).
        encoder_options: its options (width, norm, ...).
        encoder_checkpoint: state dict (of ``encoder``) or TorchScript file; ``None``: random weights.
        encoder_seed: seed of random encoder weights.
        input_size: encoder input side (``None``: the training patches' size).
        epochs: maximum epochs.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        patience: early-stopping patience in epochs (validation AUC); ``None``/0: no early stopping.
        min_epochs: never stop before this epoch.
        batch_size: bags per step.
        val_fraction: share of each class's training bags held out for validation/early stopping (0: none).
        standardize: standardise features with the training instances' statistics.
        num_classes: number of classes (``None``: 1 + the largest label seen, at least 2).
        allow_overlap: allow slides that are both in training and test (otherwise an error: leakage).
        head_def: the MIL head as a definition (config entry ``head_def``: a class or ``functools.partial`` of one,
            e.g. MONAI's ``"_mode_": "callable"``), replacing ``model``/``head_options``; ``in_features`` and
            ``num_classes`` are filled in unless it sets them, and it keeps :class:`~mil.heads.MILHead`'s contract
            (checked on a blank bag). :class:`~mil.heads.RegistryHead` (the bundle default) means ``model``.
        encoder_def: the frozen encoder as a definition (config entry ``encoder_def``), replacing ``encoder``/
            ``encoder_options``; its arguments must be JSON values (recorded in ``model.pt`` and the cache key).
            :class:`~monai_distill.components.RegistryNetwork` (the bundle default) means ``encoder``.
        init_checkpoint: a ``model.pt`` of this workflow to fine-tune instead of training from scratch (seed 003
            Table 5, cross-centre transfer): same head, classes and encoder; its feature standardisation is kept.
        optimizer_def: the head's optimiser without its params (config entry ``optimizer_def``, e.g.
            ``torch.optim.AdamW`` as ``"_mode_": "callable"``), given ``lr`` unless it sets its own; ``None``: Adam
            with ``lr`` and ``weight_decay``. Recorded in ``metrics.json`` as ``optimizer``.
        **kwargs: options of the held-out side and features (see :class:`_MILWorkflowBase`: ``feature_cache``,
            ``device``, ``amp``, ``num_threads``, ``seed``, ``test_split``, ``max_test_patches``, tiling options,
            ``n_heatmaps``, ``progress``, and ``reader_def``/``masker_def``: the slide reader and tissue masker that
            tile held-out slides, as in the ``wsi_tiling`` bundle).
    """

    def __init__(
        self,
        train_bags: str | os.PathLike,
        test_slides: str | os.PathLike,
        output_dir: str | os.PathLike,
        model: str = "clam_sb",
        head_options: dict[str, Any] | None = None,
        encoder: str | None = "resnetap10",
        encoder_options: dict[str, Any] | None = None,
        encoder_checkpoint: str | None = None,
        encoder_seed: int = 0,
        input_size: int | None = None,
        epochs: int = 20,
        lr: float = 2e-4,
        weight_decay: float = 1e-5,
        patience: int | None = 10,
        min_epochs: int = 1,
        batch_size: int = 1,
        val_fraction: float = 0.2,
        standardize: bool = True,
        num_classes: int | None = None,
        allow_overlap: bool = False,
        head_def: Any = None,
        encoder_def: Any = None,
        init_checkpoint: str | os.PathLike | None = None,
        optimizer_def: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(test_slides, output_dir, **kwargs)
        self.optimizer_def = as_factory(optimizer_def, "optimizer_def")
        if self.optimizer_def is not None:  # an optimiser that cannot be built fails now, not after the features
            check_optimizer(self.optimizer_def, "optimizer_def")
        self.train_bags = Path(train_bags)
        self.init_checkpoint = Path(init_checkpoint) if init_checkpoint else None
        if self.init_checkpoint is not None and not self.init_checkpoint.is_file():
            raise FileNotFoundError(f"--init_checkpoint: MIL checkpoint '{self.init_checkpoint}' does not exist (a "
                                    "model.pt of the mil_slide_classification train.json).")
        self.num_classes = option_int(num_classes, "num_classes", minimum=2, allow_none=True)
        # The bundle defaults (RegistryHead(@model), RegistryNetwork(@encoder)) mean the flat flags.
        self.head_def = as_factory(head_def, "head_def")
        registry = registry_parts(self.head_def, RegistryHead)  # --head_def#hidden_dim 64 on the default: options
        if registry is not None:
            model, self.head_def = registry[0], None
            head_options = {**option_dict(head_options, "head_options"), **registry[1]}
        self.head_options = option_dict(head_options, "head_options")
        if self.head_def is None:
            self.model: str = option_choice(model, "model", MIL_HEADS.names())  # type: ignore[assignment]
            try:  # a tiny head with these options: a misspelt option fails now, not after feature extraction
                get_mil_head(self.model, 8, self.num_classes or 2, **self.head_options)
            except (TypeError, ValueError, KeyError, AssertionError, RuntimeError) as e:
                raise OptionError(f"--head_options {self.head_options}: not valid for head '{self.model}' ({e})."
                                  ) from e
        else:
            if self.head_options:
                raise OptionError(f"--head_options {self.head_options} apply to the registry heads (--model); put the "
                                  "arguments of --head_def into its definition (e.g. --head_def#hidden_dim 64).")
            self.model = component_target(self.head_def)
            build_head(self.head_def, 8, self.num_classes or 2)  # a head that breaks the contract fails now
        encoder_factory = as_factory(encoder_def, "encoder_def")
        definition = None
        registry = registry_parts(encoder_factory, RegistryNetwork)  # --encoder_def#width 32: encoder options
        if registry is not None:
            encoder = registry[0]
            encoder_options = {**option_dict(encoder_options, "encoder_options"), **registry[1]}
        elif encoder_factory is not None:
            definition, encoder = _encoder_definition(encoder_factory), component_label(encoder_factory)
        self.encoder = _encoder_config(encoder, encoder_options, encoder_checkpoint, encoder_seed, input_size,
                                       definition)
        self.train_config = TrainConfig(
            epochs=option_int(epochs, "epochs", minimum=1),  # type: ignore[arg-type]
            lr=option_float(lr, "lr", minimum=0, min_inclusive=False),  # type: ignore[arg-type]
            weight_decay=option_float(weight_decay, "weight_decay", minimum=0),  # type: ignore[arg-type]
            patience=option_int(patience, "patience", minimum=0, allow_none=True) or None,
            min_epochs=option_int(min_epochs, "min_epochs", minimum=0),  # type: ignore[arg-type]
            batch_size=option_int(batch_size, "batch_size", minimum=1),  # type: ignore[arg-type]
            seed=self.seed, device=self.device, amp=self.amp, num_threads=self.num_threads,
            standardize=option_bool(standardize, "standardize"), progress=self.progress,
        )
        self.val_fraction: float = option_float(val_fraction, "val_fraction", 0.0, 1.0)  # type: ignore[assignment]
        if self.val_fraction >= 1.0:
            raise OptionError(f"--val_fraction must be in [0, 1) (the share of training bags held out for validation), "
                              f"got {val_fraction!r}.")
        self.allow_overlap = option_bool(allow_overlap, "allow_overlap")

    def run(self) -> dict[str, Any]:
        """Train and evaluate; returns the metrics (rank 0; other ranks return ``{}``).

        The output directory is locked for the run and gets a ``status.json``; a failed run's ``model.pt``,
        ``metrics.json``, ... are moved to ``failed/`` (see :func:`monai_distill.runs.guarded_run`).
        """
        refuse_multiprocess_without_config("mil_slide_classification")
        with guarded_run(self.output_dir, TRAIN_ARTEFACTS, {"workflow": "mil_slide_classification train"}), \
                torch_threads(self.num_threads):
            check_output_dir(self.output_dir)
            return self._run()

    def _run(self) -> dict[str, Any]:
        # Everything that can be checked is checked before tiling, feature extraction or training starts: every
        # training bag readable, labels of at least two classes within the head's, held-out slides listed and
        # labelled, no slide on both sides, and features of one size.
        try:
            train_dir = BagDirectory(self.train_bags)
        except (FileNotFoundError, BagError) as e:
            raise type(e)(f"--train_bags: {e}") from e
        train_scan = _scan_bags(train_dir, f"--train_bags '{self.train_bags}'")
        num_classes = self._class_count(train_scan)
        ref_meta = {"patch_size": None if train_scan.patch_shape is None else train_scan.patch_shape[-1],
                    "level": train_scan.meta.get("level"), "mpp": train_scan.meta.get("mpp")}
        test_scan = self._scan_test(ref_meta)
        _check_labels(test_scan, num_classes, "--num_classes" if self.num_classes else "the training bags")
        overlap = sorted(set(train_scan.slide_ids) & set(test_scan.slide_ids))
        if overlap and not self.allow_overlap:
            raise BagError(
                f"slides {overlap[:10]} are both training bags ('{self.train_bags}') and held-out test slides: the "
                "test would see its own training slides. Use a test split (test_split) or set allow_overlap."
            )
        extractor = self._extractor(self.encoder)
        reference = train_scan.patch_shape or test_scan.patch_shape
        if reference is not None:
            self._setup_encoder(extractor, reference)
        _check_feature_dims([train_scan, test_scan], extractor.feature_dim, f"encoder '{self.encoder.name}'")
        test = self._test_bags(ref_meta)
        start = time.perf_counter()
        feats = self._features(extractor, {"train": train_dir, "test": test})
        if feats is None:
            return {}
        feature_seconds = time.perf_counter() - start
        train_f, val_f = stratified_split(feats["train"], self.val_fraction, self.seed)
        in_features = feats["train"][0].features.shape[1]  # type: ignore[union-attr]
        trainer = MILTrainer(self.head_def or self.model, in_features, num_classes, self.head_options,
                             self.train_config, optimizer_def=self.optimizer_def)
        if self.init_checkpoint is not None:
            self._init_from(trainer, extractor.key)
        result = trainer.fit(train_f, val_f)
        self._write_history(result)
        train_m = trainer.predict(train_f).metrics()
        sources = sorted({b.source for b in feats["train"]})
        extra = {"encoder": self.encoder.to_dict(), "encoder_key": extractor.key, "feature_dim": in_features,
                 "in_channels": None if reference is None else reference[0],
                 "input_size": None if extractor.encoder is None else extractor.encoder.input_size,
                 "tiling": ref_meta, "epochs": result.epochs_run, "seconds_per_epoch": result.seconds_per_epoch,
                 "train_source": "+".join(sources)}
        trainer.save(self.output_dir / "model.pt", extra)
        metrics = {
            "epochs": result.epochs_run,
            "seconds_per_epoch": result.seconds_per_epoch,
            "device": str(trainer.device),
            "amp": trainer.amp,
            "max_epochs": self.train_config.epochs,
            "optimizer": component_target(self.optimizer_def or torch.optim.Adam),
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "val_auc": max((h.get("val_auc", float("nan")) for h in result.history), default=float("nan")),
            "train_auc": train_m["auc"],
            "train_acc": train_m["acc"],
            "n_train_bags": len(train_f),
            "n_val_bags": len(val_f),
            "train_source": "+".join(sources),
            "mean_train_bag_size": float(np.mean([len(b) for b in feats["train"]])),
            "mean_test_bag_size": float(np.mean([len(b) for b in feats["test"]])),
            "encoder": extractor.key,
            "feature_dim": in_features,
            "feature_seconds": round(feature_seconds, 3),
            "seed": self.seed,
            "train_bags": str(self.train_bags),
            "test_slides": str(self.test_slides),
            "init_checkpoint": None if self.init_checkpoint is None else str(self.init_checkpoint),
        }
        return self._write_outputs(trainer, feats["test"], metrics)

    def _init_from(self, trainer: MILTrainer, encoder_key: str) -> None:
        """Load ``init_checkpoint`` into ``trainer``; its head must have seen features of this run's encoder."""
        try:
            extra = trainer.init_from(self.init_checkpoint)  # type: ignore[arg-type]
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"--init_checkpoint: {e}") from e
        if extra.get("encoder_key") != encoder_key:
            raise ValueError(f"--init_checkpoint '{self.init_checkpoint}' was trained on features of encoder "
                             f"{extra.get('encoder_key')!r}, this run makes {encoder_key!r}: fine-tune with the "
                             "encoder settings of the checkpoint's run (encoder, encoder_options, encoder_seed, "
                             "input_size).")

    def _class_count(self, train: _Scan) -> int:
        """The head's class count: ``num_classes``, or one more than the largest training label; training bags must
        show at least two classes, and without ``num_classes`` every class 0..C-1."""
        distinct = sorted(set(train.labels))
        if len(distinct) < 2:
            raise BagError(f"{train.where}: all {len(train.labels)} training bag(s) have label {distinct[0]}; "
                           "training a classifier needs bags of at least two classes.")
        if self.num_classes is not None:
            _check_labels(train, self.num_classes, "--num_classes")
            return self.num_classes
        missing = sorted(set(range(distinct[-1] + 1)) - set(distinct))
        if missing:
            raise BagError(f"{train.where}: labels {distinct} leave class(es) {missing} without a training bag; class "
                           f"indices must run 0..C-1 (relabel the bags, or set --num_classes {distinct[-1] + 1} to "
                           "train with empty classes).")
        return distinct[-1] + 1

    def _write_history(self, result: TrainResult) -> None:
        with atomic_path(self.output_dir / "history.csv") as tmp:
            pd.DataFrame(result.history).to_csv(tmp, index=False)


class MILEvaluateWorkflow(_MILWorkflowBase):
    """Evaluate a head checkpoint (``model.pt`` of :class:`MILTrainWorkflow`) on real held-out slides.

    Features are made with the encoder recorded in the checkpoint; held-out slides are tiled like the training
    patches unless tiling options are given. Writes ``metrics.json``, ``predictions.csv`` and heatmaps.

    Args:
        checkpoint: the head checkpoint.
        test_slides: held-out slides (see the module doc).
        output_dir: results directory.
        head_def: the head definition to load the weights into (config entry ``head_def``); ``None``: the head the
            checkpoint records (a registry name, or a definition whose ``_target_`` must be importable).
        **kwargs: see :class:`_MILWorkflowBase`.
    """

    ARTEFACTS = EVALUATE_ARTEFACTS

    def __init__(
        self, checkpoint: str | os.PathLike, test_slides: str | os.PathLike, output_dir: str | os.PathLike,
        head_def: Any = None, **kwargs: Any,
    ) -> None:
        super().__init__(test_slides, output_dir, **kwargs)
        self.checkpoint = Path(checkpoint)
        self.head_def = as_factory(head_def, "head_def")

    def run(self) -> dict[str, Any]:
        """Evaluate; returns the metrics (rank 0; other ranks return ``{}``). Locked and recorded like training."""
        refuse_multiprocess_without_config("mil_slide_classification")
        kind = type(self).__name__.removeprefix("MIL").removesuffix("Workflow").lower()
        with guarded_run(self.output_dir, self.ARTEFACTS, {"workflow": f"mil_slide_classification {kind}"}), \
                torch_threads(self.num_threads):
            check_output_dir(self.output_dir)
            return self._run()

    def _load_head(self) -> tuple[MILTrainer, dict[str, Any]]:
        """The trained head of ``checkpoint`` (into ``head_def`` when given) and the checkpoint's ``extra``."""
        overrides = {"device": self.device, "amp": self.amp, "num_threads": self.num_threads, "progress": self.progress}
        try:
            return MILTrainer.load(self.checkpoint, head_def=self.head_def, **overrides)
        except OptionError:
            raise
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"--checkpoint: {e}") from e

    def _run(self) -> dict[str, Any]:
        trainer, extra = self._load_head()
        if "encoder" not in extra:
            raise ValueError(f"--checkpoint '{self.checkpoint}' records no encoder; it was not written by "
                             "MILTrainWorkflow (the mil_slide_classification train.json).")
        # Checked before any slide is tiled: held-out labels within the head's classes, features of its size.
        test_scan = self._scan_test(extra.get("tiling") or {})
        _check_labels(test_scan, trainer.num_classes, f"--checkpoint '{self.checkpoint}'")
        extractor = self._extractor(EncoderConfig.from_any(extra["encoder"]))
        if extra.get("in_channels") and extra.get("input_size"):
            self._setup_encoder(extractor, (int(extra["in_channels"]), 0, int(extra["input_size"])))
            if extractor.key != extra.get("encoder_key"):
                logger.warning(
                    "encoder key %s differs from the checkpoint's %s (another torch version or a changed encoder "
                    "checkpoint): features may not match those the head was trained on.", extractor.key,
                    extra.get("encoder_key"))
        if extractor.feature_dim is not None and extractor.feature_dim != trainer.in_features:
            raise ValueError(f"--checkpoint '{self.checkpoint}': its head takes {trainer.in_features} features per "
                             f"instance but its encoder now gives {extractor.feature_dim} (a changed encoder "
                             "checkpoint?).")
        _check_feature_dims([test_scan], trainer.in_features, f"the head of --checkpoint '{self.checkpoint}'")
        test = self._test_bags(extra.get("tiling") or {})
        feats = self._features(extractor, {"test": test})
        if feats is None:
            return {}
        metrics = {"epochs": extra.get("epochs"), "seconds_per_epoch": extra.get("seconds_per_epoch"),
                   "device": str(trainer.device), "amp": trainer.amp, "checkpoint": str(self.checkpoint),
                   "train_source": extra.get("train_source"), "encoder": extractor.key, "seed": self.seed,
                   "test_slides": str(self.test_slides)}
        atomic_write_json(json.loads(json.dumps(extra, default=str)), self.output_dir / "checkpoint_info.json")
        return self._write_outputs(trainer, feats["test"], metrics)


class MILInferenceWorkflow(MILEvaluateWorkflow):
    """Predict held-out slides with a trained head (``model.pt``): ``inference.json`` of the bundle.

    The same path as :class:`MILEvaluateWorkflow` (encoder recorded in the checkpoint, tiling like the training
    patches, feature cache), but slide labels are not needed: a directory of slides, a CSV with empty labels or a
    tiling output of unlabelled slides is predicted as it is. Writes ``predictions.csv`` (``slide_id, source, pred,
    prob_0, ...``), ``heatmaps/`` and ``inference.json`` (what was predicted with what); no metrics.

    Args: as :class:`MILEvaluateWorkflow`.
    """

    ARTEFACTS = INFERENCE_ARTEFACTS
    # Slides without a label get class 0 inside the bags (never reported: predictions.csv has no label column).
    missing_label = 0

    def _write_outputs(self, trainer: MILTrainer, test: list[Bag], metrics: dict[str, Any]) -> dict[str, Any]:
        preds = trainer.predict(test)
        with atomic_path(self.output_dir / "predictions.csv") as tmp:
            preds.table().drop(columns=["label"]).to_csv(tmp, index=False)
        keep = ("checkpoint", "encoder", "device", "amp", "seed", "test_slides", "train_source")
        info = {"status": "finished", "model": trainer.model_name, "num_classes": trainer.num_classes,
                "n_slides": len(test), **{k: metrics.get(k) for k in keep},
                "predicted_classes": {str(c): int((preds.preds == c).sum()) for c in range(trainer.num_classes)},
                "heatmaps": self._heatmaps(test, preds)}
        info = _json_clean(info)
        atomic_write_json(info, self.output_dir / "inference.json")
        logger.info("%s: predicted %d slide(s) -> %s", trainer.model_name, len(test), self.output_dir)
        return info
