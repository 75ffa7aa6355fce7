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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch.utils.data import Subset

from monai_distill.utils import atomic_path, atomic_write_json, check_output_dir, to_bool
from wsi.distributed import barrier, dist_context, shard
from wsi.slides import list_slides
from wsi.workflows import TilingWorkflow

from .bags import Bag, BagDirectory, BagError
from .features import EncoderConfig, FeatureExtractor
from .heatmap import save_attention_heatmap
from .real_bags import make_real_bags
from .train import MILTrainer, Predictions, TrainConfig, TrainResult, torch_threads

__all__ = ["MILEvaluateWorkflow", "MILTrainWorkflow", "real_test_bags", "stratified_split"]

logger = logging.getLogger(__name__)


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
                              progress=progress)
    if len(bags) == 0:
        raise BagError(f"no real test bag from '{path}' (split={split!r}).")
    return bags


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
    ) -> None:
        self.test_slides = test_slides
        self.output_dir = Path(output_dir)
        self.feature_cache = Path(feature_cache) if feature_cache else self.output_dir / "features"
        self.feature_batch_size = int(feature_batch_size)
        self.device = None if device in (None, "", "auto") else str(device)
        self.amp = to_bool(amp)
        self.num_threads = None if num_threads in (None, "", 0) else int(num_threads)
        self.seed = int(seed)
        self.test_split = test_split or None
        self.max_test_patches = None if max_test_patches in (None, "", 0) else int(max_test_patches)
        self.test_bags_dir = Path(test_bags_dir) if test_bags_dir else self.output_dir / "test_bags"
        self.patch_size = None if patch_size is None else int(patch_size)
        self.level = None if level is None else int(level)
        self.mpp = None if mpp is None else float(mpp)
        self.tissue_threshold = float(tissue_threshold)
        self.backend = str(backend)
        self.label_map = label_map
        self.n_heatmaps = int(n_heatmaps)
        self.progress = to_bool(progress)

    def _tiling_options(self, reference: dict[str, Any]) -> dict[str, Any]:
        """Tiling settings for held-out slides: explicit options first, else those of the training patches
        (``reference``: patch size, level, mpp), so test patches look like the training ones."""
        level, mpp = self.level, self.mpp
        if level is None and mpp is None:
            level = reference.get("level")
            mpp = reference.get("mpp") if level is None else None
        return {"patch_size": self.patch_size or reference.get("patch_size") or 256, "level": level, "mpp": mpp,
                "tissue_threshold": self.tissue_threshold, "backend": self.backend}

    def _test_bags(self, reference: dict[str, Any]) -> Sequence[Bag]:
        return real_test_bags(self.test_slides, self.test_bags_dir, self.test_split, self.max_test_patches, self.seed,
                              self.label_map, self._tiling_options(reference), self.progress)

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
        metrics = {"model": trainer.model_name, "auc": m["auc"], "acc": m["acc"], "balanced_acc": m["balanced_acc"],
                   **metrics, "test_loss": m["loss"], "n_test_bags": len(test),
                   "heatmaps": self._heatmaps(test, preds)}
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
        model: head name: clam_sb, clam_mb, dsmil, transmil, abmil, mean, max.
        head_options: head hyper-parameters.
        encoder: factory network name of the frozen encoder (``None`` with a TorchScript ``encoder_checkpoint``).
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
        **kwargs: options of the held-out side and features (see :class:`_MILWorkflowBase`: ``feature_cache``,
            ``device``, ``amp``, ``num_threads``, ``seed``, ``test_split``, ``max_test_patches``, tiling options,
            ``n_heatmaps``, ``progress``).
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
        **kwargs: Any,
    ) -> None:
        super().__init__(test_slides, output_dir, **kwargs)
        self.train_bags = Path(train_bags)
        self.model = str(model).lower()
        self.head_options = dict(head_options or {})
        options = dict(encoder_options) if encoder_options is not None else None
        enc: dict[str, Any] = {"name": encoder, "checkpoint": encoder_checkpoint or None, "seed": int(encoder_seed),
                               "input_size": None if input_size is None else int(input_size)}
        if options is not None:
            enc["options"] = options
        self.encoder = EncoderConfig.from_any(enc)
        self.train_config = TrainConfig(
            epochs=int(epochs), lr=float(lr), weight_decay=float(weight_decay),
            patience=None if patience in (None, "", 0) else int(patience), min_epochs=int(min_epochs),
            batch_size=int(batch_size), seed=self.seed, device=self.device, amp=self.amp,
            num_threads=self.num_threads, standardize=to_bool(standardize), progress=self.progress,
        )
        self.val_fraction = float(val_fraction)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.allow_overlap = to_bool(allow_overlap)

    def run(self) -> dict[str, Any]:
        """Train and evaluate; returns the metrics (rank 0; other ranks return ``{}``)."""
        check_output_dir(self.output_dir)
        with torch_threads(self.num_threads):
            return self._run()

    def _run(self) -> dict[str, Any]:
        train_dir = BagDirectory(self.train_bags)
        reference = train_dir[0]  # bags are read one at a time: a cohort of real patches need not fit in memory
        ref_meta = {"patch_size": None if reference.patch_shape is None else reference.patch_shape[-1],
                    "level": reference.meta.get("level"), "mpp": reference.meta.get("mpp")}
        test = self._test_bags(ref_meta)
        overlap = sorted(set(train_dir.slide_ids) & {_slide_id(test, i) for i in range(len(test))})
        if overlap and not self.allow_overlap:
            raise BagError(
                f"slides {overlap[:10]} are both training bags ('{self.train_bags}') and held-out test slides: the "
                "test would see its own training slides. Use a test split (test_split) or set allow_overlap."
            )
        extractor = self._extractor(self.encoder)
        if reference.patch_shape is not None:
            extractor.setup(reference.patch_shape[0], reference.patch_shape[-1])
        start = time.perf_counter()
        feats = self._features(extractor, {"train": train_dir, "test": test})
        if feats is None:
            return {}
        feature_seconds = time.perf_counter() - start
        train_f, val_f = stratified_split(feats["train"], self.val_fraction, self.seed)
        num_classes = self.num_classes or max(2, 1 + max(b.label for b in feats["train"] + feats["test"]))
        in_features = feats["train"][0].features.shape[1]  # type: ignore[union-attr]
        trainer = MILTrainer(self.model, in_features, num_classes, self.head_options, self.train_config)
        result = trainer.fit(train_f, val_f)
        self._write_history(result)
        train_m = trainer.predict(train_f).metrics()
        sources = sorted({b.source for b in feats["train"]})
        extra = {"encoder": self.encoder.to_dict(), "encoder_key": extractor.key, "feature_dim": in_features,
                 "in_channels": None if reference.patch_shape is None else reference.patch_shape[0],
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
        }
        return self._write_outputs(trainer, feats["test"], metrics)

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
        **kwargs: see :class:`_MILWorkflowBase`.
    """

    def __init__(
        self, checkpoint: str | os.PathLike, test_slides: str | os.PathLike, output_dir: str | os.PathLike,
        **kwargs: Any,
    ) -> None:
        super().__init__(test_slides, output_dir, **kwargs)
        self.checkpoint = Path(checkpoint)

    def run(self) -> dict[str, Any]:
        """Evaluate; returns the metrics (rank 0; other ranks return ``{}``)."""
        check_output_dir(self.output_dir)
        with torch_threads(self.num_threads):
            return self._run()

    def _run(self) -> dict[str, Any]:
        overrides = {"device": self.device, "amp": self.amp, "num_threads": self.num_threads, "progress": self.progress}
        trainer, extra = MILTrainer.load(self.checkpoint, **overrides)
        if "encoder" not in extra:
            raise ValueError(f"'{self.checkpoint}' records no encoder; it was not written by MILTrainWorkflow.")
        test = self._test_bags(extra.get("tiling") or {})
        extractor = self._extractor(EncoderConfig.from_any(extra["encoder"]))
        if extra.get("in_channels") and extra.get("input_size"):
            extractor.setup(int(extra["in_channels"]), int(extra["input_size"]))
            if extractor.key != extra.get("encoder_key"):
                logger.warning(
                    "encoder key %s differs from the checkpoint's %s (another torch version or a changed encoder "
                    "checkpoint): features may not match those the head was trained on.", extractor.key,
                    extra.get("encoder_key"))
        feats = self._features(extractor, {"test": test})
        if feats is None:
            return {}
        metrics = {"epochs": extra.get("epochs"), "seconds_per_epoch": extra.get("seconds_per_epoch"),
                   "device": str(trainer.device), "amp": trainer.amp, "checkpoint": str(self.checkpoint),
                   "train_source": extra.get("train_source"), "encoder": extractor.key, "seed": self.seed,
                   "test_slides": str(self.test_slides)}
        atomic_write_json(json.loads(json.dumps(extra, default=str)), self.output_dir / "checkpoint_info.json")
        return self._write_outputs(trainer, feats["test"], metrics)
