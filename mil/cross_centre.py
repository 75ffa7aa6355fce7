"""Cross-centre transfer (seed 003, Histo-DD, §5 "In-domain cross-centre transfer learning" and Table 5).

A model trained at a *source* centre is fine-tuned on data of a *target* centre, once on the target's synthetic data
(its per-slide Histo-DD bags: what a centre would share) and once on the target's full data (every real patch /
real bag: what it would otherwise have to share), and compared with no fine-tuning. Every model is tested on held-out
real slides of the target centre. Both levels of Table 5:

* **patch level**: a patch classifier (tissue class of each patch, from the centres' annotation masks) trained on
  the source centre's real patches, fine-tuned on the target's synthetic patches (their ``patch_classes``) or on all
  its real patches;
* **slide level**: a MIL head (CLAM-SB by default) trained on the source centre's real bags, fine-tuned
  (``MILTrainWorkflow(init_checkpoint=...)``) on the target's synthetic bags or on its real bags.

Each arm records test AUC and balanced accuracy, fine-tuning seconds and epochs, and the megabytes transferred (the
bag files the target centre sends). :meth:`CrossCentreWorkflow.run` writes ``results.csv`` and ``metrics.json``
(with, per level, the share of the full-data fine-tune's AUC gain that the synthetic fine-tune reaches, and the bytes
and time ratios) and is resumable: an arm whose settings did not change is read back, not rerun.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from monai_distill.checks import OptionError, option_bool, option_choice, option_dict, option_float, option_int
from monai_distill.evaluation import classification_metrics, predict, train_network
from monai_distill.networks import NETWORKS, get_network
from monai_distill.presets import get_preset
from monai_distill.runs import guarded_run
from monai_distill.utils import atomic_path, atomic_write_json, resolve_device, seed_everything

from .bags import BagDirectory, BagError
from .synthetic_bags import mask_patch_labels
from .train import torch_threads
from .workflows import MILTrainWorkflow

__all__ = ["ARMS", "LEVELS", "CrossCentreWorkflow", "PatchSet", "bag_megabytes", "transfer_summary"]

logger = logging.getLogger(__name__)

LEVELS = ("patch", "slide")
ARMS = ("none", "synthetic", "full")  # no fine-tuning, the target's synthetic data, the target's full data


def bag_megabytes(bags: BagDirectory) -> float:
    """Megabytes of the bag files of ``bags`` (what a centre sends)."""
    return float(sum(Path(e.path).stat().st_size for e in bags.entries)) / 1e6


@dataclass
class PatchSet:
    """Labelled patches of one side of the transfer: ``images`` (N, C, H, W) float in [0, 1], ``labels`` (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    megabytes: float

    @classmethod
    def from_real_bags(cls, bags: BagDirectory, annotations: Path, where: str) -> PatchSet:
        """Every patch of the real ``bags`` that the annotation mask ``annotations/<slide_id>.png`` labels (value k >
        0 is class k - 1, as in ``wsi_synthetic_bags --annotations``); unannotated patches are left out.

        Raises:
            FileNotFoundError: a slide has no annotation mask.
            BagError: a bag without patches, coordinates or tiling meta, or no labelled patch at all.
        """
        images, labels = [], []
        for bag in bags:
            mask_path = annotations / f"{bag.slide_id}.png"
            if not mask_path.is_file():
                raise FileNotFoundError(f"{where}: no annotation mask '{mask_path}' for slide '{bag.slide_id}' (the "
                                        "patch level needs the centres' annotation masks).")
            if bag.patches is None or bag.coords is None or "footprint" not in bag.meta:
                raise BagError(f"{where}: bag '{bag.slide_id}' is not a real bag with patches, coords and tiling meta "
                               "(made by mil.make_real_bags).")
            found = mask_patch_labels(np.asarray(Image.open(mask_path)), bag.coords.numpy(), bag.meta["footprint"],
                                      bag.meta["level0_size"], bag.slide_id)
            keep = torch.as_tensor(found >= 0)
            images.append(bag.pixels()[keep])
            labels.append(torch.as_tensor(found)[keep])
        if not images or sum(len(x) for x in labels) == 0:
            raise BagError(f"{where}: no annotated patch in '{bags.root}'.")
        return cls(torch.cat(images), torch.cat(labels), bag_megabytes(bags))

    @classmethod
    def from_synthetic_bags(cls, bags: BagDirectory, where: str) -> PatchSet:
        """The synthetic patches of ``bags`` with the class each was distilled for (meta ``patch_classes``).

        Raises:
            BagError: a bag without ``patch_classes`` (bags distilled without ``--annotations``).
        """
        images, labels = [], []
        for bag in bags:
            classes = bag.meta.get("patch_classes")
            if classes is None or len(classes) != len(bag):
                raise BagError(f"{where}: synthetic bag '{bag.slide_id}' records no class per patch (meta "
                               "'patch_classes'); the patch level needs bags distilled with --annotations.")
            images.append(bag.pixels())
            labels.append(torch.as_tensor(classes, dtype=torch.long))
        return cls(torch.cat(images), torch.cat(labels), bag_megabytes(bags))


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def transfer_summary(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per level: the share of the full fine-tune's AUC gain over no fine-tuning that the synthetic fine-tune reaches
    (``gain_ratio``), both gains in balanced accuracy too, and the synthetic fine-tune's bytes and seconds as
    fractions of the full one's."""
    out: dict[str, dict[str, float]] = {}
    for level in LEVELS:
        by_arm = {r["arm"]: r for r in rows if r["level"] == level}
        if not all(a in by_arm for a in ARMS):
            continue
        none, syn, full = (by_arm[a] for a in ARMS)
        gain = full["auc"] - none["auc"]
        gain_bacc = full["balanced_acc"] - none["balanced_acc"]
        out[level] = {
            "full_gain": gain,
            "synthetic_gain": syn["auc"] - none["auc"],
            "gain_ratio": (syn["auc"] - none["auc"]) / gain if gain > 0 else float("nan"),
            # AUC saturates when the source model already ranks the target's slides: the decisions may still gain
            "full_gain_balanced_acc": gain_bacc,
            "synthetic_gain_balanced_acc": syn["balanced_acc"] - none["balanced_acc"],
            "bytes_ratio": syn["megabytes"] / full["megabytes"] if full["megabytes"] else float("nan"),
            "time_ratio": syn["finetune_seconds"] / full["finetune_seconds"] if full["finetune_seconds"] else float(
                "nan"),
        }
    return out


class CrossCentreWorkflow:
    """Fine-tune a source centre's models on a target centre's synthetic vs full data (what ``cross_centre.json`` of
    the ``mil_slide_classification`` bundle runs).

    Args:
        source_bags: the source centre's real training bags (``mil.make_real_bags``).
        target_bags: the target centre's real training bags (the *full* arm).
        target_synthetic_bags: the target centre's synthetic bags of the same slides (``wsi_synthetic_bags``; with
            ``--annotations`` for the patch level).
        test_bags: real bags of the target centre's held-out slides.
        output_dir: results directory (``results.csv``, ``metrics.json``, ``slide/<arm>/``, ``patch/``).
        source_annotations: annotation masks of the source centre's slides (``<slide_id>.png``; patch level).
        target_annotations: annotation masks of the target centre's slides (training and held-out; patch level).
        levels: ``patch`` and/or ``slide``.
        model: MIL head of the slide level.
        mil_options: further :class:`~mil.workflows.MILTrainWorkflow` options of every slide-level run (``epochs``,
            ``lr``, ``patience``, ``encoder``, ...).
        patch_arch: patch classifier (a registered network; seed 003 uses ResNet-18).
        patch_options: its options (``width``, ``norm``, ...).
        source_epochs: epochs of the source patch classifier.
        finetune_epochs: epochs of each patch-level fine-tune (seed 003: 5 for both arms).
        lr: SGD learning rate of the patch level (the fine-tunes' lr decays by 10 after half their epochs).
        seed: seed of every model and data order.
        device: ``cuda`` when available by default.
        num_threads: torch intra-op threads (``None``: leave torch's setting).
        progress: progress bars (only on a terminal).
    """

    def __init__(
        self,
        source_bags: str | os.PathLike,
        target_bags: str | os.PathLike,
        target_synthetic_bags: str | os.PathLike,
        test_bags: str | os.PathLike,
        output_dir: str | os.PathLike,
        source_annotations: str | os.PathLike | None = None,
        target_annotations: str | os.PathLike | None = None,
        levels: Sequence[str] = LEVELS,
        model: str = "clam_sb",
        mil_options: dict[str, Any] | None = None,
        patch_arch: str = "resnetap10",
        patch_options: dict[str, Any] | None = None,
        source_epochs: int = 20,
        finetune_epochs: int = 5,
        lr: float = 0.01,
        seed: int = 0,
        device: str | None = None,
        num_threads: int | None = None,
        progress: bool = True,
    ) -> None:
        self.bag_dirs = {}
        for name, value in (("source_bags", source_bags), ("target_bags", target_bags),
                            ("target_synthetic_bags", target_synthetic_bags), ("test_bags", test_bags)):
            try:
                self.bag_dirs[name] = BagDirectory(value)
            except (FileNotFoundError, BagError) as e:
                raise type(e)(f"--{name}: {e}") from e
        self.output_dir = Path(output_dir)
        levels = [levels] if isinstance(levels, str) else list(levels)
        self.levels = [option_choice(v, "levels", LEVELS) for v in levels]
        self.annotations: dict[str, Path | None] = {}
        for name, value in (("source_annotations", source_annotations), ("target_annotations", target_annotations)):
            path = Path(value) if value else None
            if path is not None and not path.is_dir():
                raise FileNotFoundError(f"--{name}: annotations folder '{path}' does not exist.")
            if path is None and "patch" in self.levels:
                raise OptionError(f"--{name} is needed for the patch level (patch classes come from the masks); "
                                  "give it, or run --levels \"['slide']\".")
            self.annotations[name] = path
        self.model = str(model)
        self.mil_options = option_dict(mil_options, "mil_options")
        self.patch_arch: str = option_choice(patch_arch, "patch_arch", NETWORKS.names())  # type: ignore[assignment]
        self.patch_options = {"width": 16, "norm": "instance", **option_dict(patch_options, "patch_options")}
        self.source_epochs: int = option_int(source_epochs, "source_epochs", minimum=1)  # type: ignore[assignment]
        self.finetune_epochs: int = option_int(finetune_epochs, "finetune_epochs", minimum=1)  # type: ignore[assignment]
        self.lr: float = option_float(lr, "lr", minimum=0, min_inclusive=False)  # type: ignore[assignment]
        self.seed: int = option_int(seed, "seed")  # type: ignore[assignment]
        try:
            self.device = resolve_device(device)
        except (RuntimeError, ValueError) as e:
            raise OptionError(f"--device must be cpu, cuda or cuda:N on a machine that has it; got {device!r} "
                              f"({e}).") from e
        self.num_threads = option_int(num_threads, "num_threads", minimum=0, allow_none=True) or None
        self.progress = option_bool(progress, "progress")

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        """Run every level's arms (finished ones are read back); returns ``metrics.json``'s content."""
        with guarded_run(self.output_dir, ("results.csv", "metrics.json"), {"workflow": "cross_centre"}), \
                torch_threads(self.num_threads):
            rows: list[dict[str, Any]] = []
            if "patch" in self.levels:
                rows += self._cached("patch", self._patch_settings(), self._patch_level)
            if "slide" in self.levels:
                rows += self._slide_level()
            table = pd.DataFrame(rows)
            with atomic_path(self.output_dir / "results.csv") as tmp:
                table.to_csv(tmp, index=False)
            metrics = {"rows": rows, "summary": transfer_summary(rows), "device": str(self.device), "seed": self.seed,
                       "bags": {k: str(v.root) for k, v in self.bag_dirs.items()}}
            atomic_write_json(metrics, self.output_dir / "metrics.json")
        for level, s in metrics["summary"].items():
            logger.info("%s level: synthetic fine-tune reaches %.0f%% of the full fine-tune's AUC gain, with %.1f%% of "
                        "its bytes and %.1f%% of its time", level, 100 * s["gain_ratio"], 100 * s["bytes_ratio"],
                        100 * s["time_ratio"])
        return metrics

    def _cached(self, name: str, settings: dict[str, Any], make: Any) -> list[dict[str, Any]]:
        """``make()``'s rows, or those of an earlier run with the same ``settings`` (``<name>/rows.json``)."""
        key = _digest(settings)
        path = self.output_dir / name / "rows.json"
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("key") == key:
                return old["rows"]
        rows = make()
        atomic_write_json({"key": key, "settings": settings, "rows": rows}, path)
        return rows

    # ------------------------------------------------------------------ patch level
    def _patch_settings(self) -> dict[str, Any]:
        return {"bags": {k: [str(e.path) for e in v.entries] for k, v in self.bag_dirs.items()},
                "annotations": {k: str(v) for k, v in self.annotations.items()}, "arch": self.patch_arch,
                "options": self.patch_options, "epochs": [self.source_epochs, self.finetune_epochs], "lr": self.lr,
                "seed": self.seed, "device": str(self.device)}

    def _patch_level(self) -> list[dict[str, Any]]:
        src_ann, tgt_ann = self.annotations["source_annotations"], self.annotations["target_annotations"]
        source = PatchSet.from_real_bags(self.bag_dirs["source_bags"], src_ann, "--source_bags")  # type: ignore[arg-type]
        sets = {"synthetic": PatchSet.from_synthetic_bags(self.bag_dirs["target_synthetic_bags"],
                                                          "--target_synthetic_bags"),
                "full": PatchSet.from_real_bags(self.bag_dirs["target_bags"], tgt_ann, "--target_bags")}  # type: ignore[arg-type]
        test = PatchSet.from_real_bags(self.bag_dirs["test_bags"], tgt_ann, "--test_bags")  # type: ignore[arg-type]
        num_classes = int(max(int(s.labels.max()) for s in (source, test, *sets.values())) + 1)
        # The source model's input normalisation is part of the model: every centre's patches go through it.
        mean = source.images.mean(dim=(0, 2, 3), keepdim=True)
        std = source.images.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)

        def norm(x: torch.Tensor) -> torch.Tensor:
            return (x - mean) / std

        preset = get_preset("quick", 2)
        seed_everything(self.seed)
        net = get_network(self.patch_arch, 2, source.images.shape[1], num_classes, source.images.shape[-1],
                          **self.patch_options)
        gen = torch.Generator().manual_seed(self.seed)
        start = time.perf_counter()
        train_network(net, norm(source.images), source.labels, self.source_epochs, self.lr, preset, gen, self.device)
        logger.info("patch level: source classifier trained on %d patches in %.1f s", len(source.labels),
                    time.perf_counter() - start)
        x_test = norm(test.images)
        rows = [self._patch_row("none", net, x_test, test.labels, 0.0, 0, 0, float("nan"))]
        for arm, data in sets.items():
            tuned = copy.deepcopy(net)
            gen = torch.Generator().manual_seed(self.seed + 1)
            start = time.perf_counter()
            train_network(tuned, norm(data.images), data.labels, self.finetune_epochs, self.lr, preset, gen,
                          self.device)
            seconds = time.perf_counter() - start
            rows.append(self._patch_row(arm, tuned, x_test, test.labels, seconds, self.finetune_epochs,
                                        len(data.labels), data.megabytes))
        return rows

    def _patch_row(self, arm: str, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seconds: float,
                   epochs: int, n_train: int, megabytes: float) -> dict[str, Any]:
        m = classification_metrics(predict(net, x, self.device), y)
        return {"level": "patch", "arm": arm, "auc": m["auc"], "balanced_acc": m["balanced_acc"], "acc": m["acc"],
                "finetune_seconds": round(seconds, 3), "epochs": epochs, "n_train": n_train,
                "megabytes": megabytes, "n_test": len(y)}

    # ------------------------------------------------------------------ slide level
    def _slide_level(self) -> list[dict[str, Any]]:
        common = {"test_slides": str(self.bag_dirs["test_bags"].root), "model": self.model, "seed": self.seed,
                  "device": str(self.device), "num_threads": self.num_threads, "progress": self.progress,
                  "feature_cache": str(self.output_dir / "features"), "n_heatmaps": 0, **self.mil_options}
        source_dir = self.output_dir / "slide" / "none"
        checkpoint = source_dir / "model.pt"
        # each arm's training bags, opened once in __init__ (a rerun reads the manifest again, not the bags)
        train_dirs = {"none": self.bag_dirs["source_bags"], "synthetic": self.bag_dirs["target_synthetic_bags"],
                      "full": self.bag_dirs["target_bags"]}
        rows = []
        for arm, train in train_dirs.items():
            settings = {"train_bags": str(train.root), **common}
            if arm != "none":
                settings["init_checkpoint"] = str(checkpoint)
            # the source model trained from scratch is the no-fine-tuning arm: tested on the target's slides as it is
            fingerprint = {**settings, "bags": [str(e.path) for e in train.entries]}
            if arm != "none":
                fingerprint["source"] = rows[0]["fingerprint"]
            rows += self._cached(f"slide/{arm}", fingerprint, lambda a=arm, s=settings, t=train, f=fingerprint: [
                self._slide_run(a, s, t, f)])
        return rows

    def _slide_run(self, arm: str, settings: dict[str, Any], train: BagDirectory,
                   fingerprint: dict[str, Any]) -> dict[str, Any]:
        m = MILTrainWorkflow(output_dir=self.output_dir / "slide" / arm, **settings).run()
        tuned = arm != "none"
        return {"level": "slide", "arm": arm, "auc": m["auc"], "balanced_acc": m["balanced_acc"], "acc": m["acc"],
                "finetune_seconds": round(m["epochs"] * m["seconds_per_epoch"], 3) if tuned else 0.0,
                "epochs": m["epochs"] if tuned else 0, "n_train": len(train) if tuned else 0,
                "megabytes": bag_megabytes(train) if tuned else float("nan"), "n_test": m.get("n_test_bags"),
                "fingerprint": _digest(fingerprint)}
