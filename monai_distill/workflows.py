"""Workflows that the bundles instantiate: distil (+ evaluate) a dataset, and evaluate a saved SyntheticSet.

Both are plain classes with a ``run()`` method, built by MONAI's ``ConfigParser`` from a bundle's
``train.json``/``evaluate.json`` so that every CLI override (``--dataset``, ``--ipc``, ...) is a config key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import __version__
from .data import RealDataset, SyntheticSet, load_dataset
from .evaluation import EvalResult, evaluate_models, evaluate_synthetic
from .methods import DistillConfig, get_method
from .networks import NETWORKS
from .presets import Preset, get_preset
from .utils import (
    atomic_write_json,
    check_output_dir,
    peak_memory_mb,
    reset_peak_memory,
    resolve_device,
    seed_everything,
    to_bool,
)

__all__ = ["DistillWorkflow", "EvaluateWorkflow", "is_main_process"]

logger = logging.getLogger("monai_distill")


def is_main_process() -> bool:
    """True on rank 0 (or without torch.distributed): only this process writes files."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{platform.system()} {cpu}, {torch.get_num_threads()} threads{gpu}, torch {torch.__version__}"


def _config_hash(cfg: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Workflow:
    """Shared set-up: device, preset, output directory, dataset loading and metrics writing.

    Args:
        output_dir: where outputs go (created; must be writable).
        dataset: MedMNIST flag or user data path.
        dataset_dir: directory of MedMNIST files.
        size: image size.
        preset: ``quick`` or ``paper``.
        seed: base seed.
        device: ``cuda``/``cpu``/``None`` (cuda when available).
        eval_models: K of the evaluation protocol (overrides the preset).
        eval_epochs: epochs of the evaluation protocol (overrides the preset).
        preset_overrides: further preset fields to override.
        progress: show progress bars.
    """

    def __init__(
        self,
        output_dir: str,
        dataset: str | None = None,
        dataset_dir: str = ".",
        size: int | None = None,
        preset: str = "quick",
        seed: int = 0,
        device: str | None = None,
        eval_models: int | None = None,
        eval_epochs: int | None = None,
        preset_overrides: dict[str, Any] | None = None,
        progress: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.dataset = dataset
        self.dataset_dir = dataset_dir
        self.size = None if size is None else int(size)
        self.preset_name = str(preset)
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.eval_models = eval_models
        self.eval_epochs = eval_epochs
        self.preset_overrides = dict(preset_overrides or {})
        self.progress = to_bool(progress)

    def _dataset_ref(self) -> str | None:
        """What ``--dataset`` must be to load this data again: the flag, or the absolute path of a user file."""
        if self.dataset is None or Path(str(self.dataset)).suffix == "":
            return self.dataset
        return str(Path(str(self.dataset)).resolve())

    def _preset(self, spatial_dims: int) -> Preset:
        # eval_models/eval_epochs are preset fields too, so the recorded preset is the one that ran.
        overrides = {**self.preset_overrides, "eval_models": self.eval_models, "eval_epochs": self.eval_epochs}
        return get_preset(self.preset_name, spatial_dims, **overrides)

    def _load(self, split: str) -> RealDataset:
        return load_dataset(self.dataset, split=split, dataset_dir=self.dataset_dir, size=self.size or 28)

    def _write_metrics(self, metrics: dict[str, Any]) -> Path:
        path = self.output_dir / "metrics.json"
        if is_main_process():
            atomic_write_json(metrics, path)
            logger.info("wrote %s", path)
        return path

    def _common_metrics(self, preset: Preset, result: EvalResult) -> dict[str, Any]:
        return {
            **result.to_metrics(),
            "preset": preset.name,
            "preset_settings": preset.to_dict(),
            "seed": self.seed,
            "device": str(self.device),
            "machine": _machine(),
            "version": __version__,
        }


class DistillWorkflow(_Workflow):
    """Distil ``dataset`` with ``method`` into ``ipc`` images per class, save it, then evaluate it.

    Writes ``synthetic.pt`` (a :class:`SyntheticSet`), ``synthetic.png`` (class-by-ipc grid) and
    ``metrics.json`` into ``output_dir``.

    Args:
        dataset: a MedMNIST flag, or the path of a user ``.npz`` (MedMNIST keys) or volume ``.csv`` (path,label).
        output_dir: where outputs go (created; must be writable).
        method: registered method name.
        ipc: images per class.
        size: MedMNIST image size (28, 64, 128, 224).
        arch: network used inside the method.
        eval_arch: network of the evaluation protocol (default ``arch``).
        method_options: method-specific settings.
        resume: continue from the last checkpoint in ``output_dir`` (iterative methods).
        evaluate: run the evaluation protocol after distillation.
        common: ``dataset_dir``, ``preset``, ``seed``, ``device``, ``eval_models``, ``eval_epochs``,
            ``preset_overrides``, ``progress`` (see :class:`_Workflow`).
    """

    def __init__(
        self,
        dataset: str,
        output_dir: str,
        method: str = "random",
        ipc: int = 10,
        size: int = 28,
        arch: str = "convnet",
        eval_arch: str | None = None,
        method_options: dict[str, Any] | None = None,
        resume: bool = False,
        evaluate: bool = True,
        **common: Any,
    ) -> None:
        super().__init__(output_dir, dataset=dataset, size=size, **common)
        # Fail on names before any data is read or time is spent.
        self.method_cls = get_method(method)
        self.method = self.method_cls.name
        self.arch = str(arch).lower()
        self.eval_arch = str(eval_arch).lower() if eval_arch else self.arch
        for name in (self.arch, self.eval_arch):
            NETWORKS.get(name)
        get_preset(self.preset_name)
        self.ipc = int(ipc)
        if self.ipc < 1:
            raise ValueError(f"ipc must be >= 1, got {ipc}.")
        self.method_options = dict(method_options or {})
        self.resume = to_bool(resume)
        self.evaluate = to_bool(evaluate)

    def run(self) -> dict[str, Any]:
        """Distil, save, evaluate; return the metrics written to ``metrics.json``."""
        check_output_dir(self.output_dir)
        seed_everything(self.seed)
        train = self._load("train")
        preset = self._preset(train.spatial_dims)
        cfg = DistillConfig(ipc=self.ipc, arch=self.arch, preset=preset, seed=self.seed, options=self.method_options)
        reset_peak_memory(self.device)

        start = time.perf_counter()
        distiller = self.method_cls(train, cfg, self.device)
        distiller.init_synthetic()
        if distiller.num_iterations:
            bar = tqdm(range(distiller.num_iterations), desc=self.method, disable=not self.progress or None)
            for it in bar:
                bar.set_postfix(distiller.step(it))
        syn = distiller.synthetic_set()
        syn.meta.update(
            preset=preset.name,
            config_hash=_config_hash(self._config(preset)),
            dataset_ref=self._dataset_ref(),
            size=self.size,
        )
        distill_seconds = time.perf_counter() - start

        if is_main_process():
            syn.save(self.output_dir / "synthetic.pt")
            syn.to_png(self.output_dir / "synthetic.png")
        metrics: dict[str, Any] = {
            "method": self.method,
            "dataset": train.name,
            "ipc": self.ipc,
            "arch": self.arch,
            "n_synthetic": len(syn),
            "learned_lr": syn.lr,
            "distill_seconds": distill_seconds,
            "config": self._config(preset),
            "data": train.describe() | {"test_n_images": None},
        }
        if self.evaluate:
            test = self._load("test")
            metrics["data"]["test_n_images"] = len(test)
            result = evaluate_synthetic(
                syn,
                test,
                self.eval_arch,
                preset,
                self.seed,
                self.device,
                progress=self.progress,
            )
            metrics.update(self._common_metrics(preset, result))
        else:
            metrics.update(preset=preset.name, seed=self.seed, device=str(self.device), machine=_machine())
        metrics["peak_memory_mb"] = peak_memory_mb(self.device)
        self._write_metrics(metrics)
        return metrics

    def _config(self, preset: Preset) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "size": self.size,
            "method": self.method,
            "ipc": self.ipc,
            "seed": self.seed,
            "arch": self.arch,
            "eval_arch": self.eval_arch,
            "preset": preset.to_dict(),
            "method_options": self.method_options,
        }


class EvaluateWorkflow(_Workflow):
    """Evaluate a saved SyntheticSet (or the whole real train split) with the protocol, on any architecture.

    Args:
        synthetic: path of a ``synthetic.pt``, or ``full`` to train on the whole real train split (upper bound).
        output_dir: where ``metrics.json`` goes.
        arch: evaluation network (cross-architecture); default the set's ``arch``.
        dataset: dataset flag/path; default the one recorded in the set.
        dataset_dir: directory of the dataset files.
        size: image size; default the one recorded in the set.
        common: ``preset``, ``seed``, ``device``, ``eval_models``, ``eval_epochs``, ``preset_overrides``,
            ``progress`` (see :class:`_Workflow`).
    """

    def __init__(
        self,
        synthetic: str,
        output_dir: str,
        arch: str | None = None,
        dataset: str | None = None,
        size: int | None = None,
        **common: Any,
    ) -> None:
        super().__init__(output_dir, dataset=dataset, size=size, **common)
        self.synthetic = str(synthetic)
        self.arch = str(arch).lower() if arch else None
        if self.arch:
            NETWORKS.get(self.arch)
        get_preset(self.preset_name)

    def run(self) -> dict[str, Any]:
        """Evaluate and write ``metrics.json``; return the metrics."""
        check_output_dir(self.output_dir)
        full = self.synthetic.lower() == "full"
        syn = None if full else SyntheticSet.load(self.synthetic)
        if syn is not None:
            self.dataset = self.dataset or syn.meta.get("dataset_ref") or syn.meta.get("dataset")
            self.size = self.size or syn.meta.get("size")
        if not self.dataset:
            raise ValueError("the dataset is not recorded in the synthetic set; pass --dataset.")
        arch = self.arch or (syn.meta.get("arch") if syn is not None else None) or "convnet"
        test = self._load("test")
        preset = self._preset(test.spatial_dims)
        reset_peak_memory(self.device)
        if full:
            train = self._load("train")
            result = evaluate_models(
                train.images,
                train.labels,
                test,
                arch,
                preset,
                self.seed,
                self.device,
                epochs=self.eval_epochs or preset.eval_epochs_full,
                progress=self.progress,
            )
            method, ipc, n = "full", None, len(train)
        else:
            result = evaluate_synthetic(
                syn,
                test,
                arch,
                preset,
                self.seed,
                self.device,
                progress=self.progress,
            )
            method, ipc, n = syn.meta.get("method"), syn.ipc, len(syn)
        metrics = {
            "method": method,
            "dataset": test.name,
            "ipc": ipc,
            "arch": arch,
            "synthetic": self.synthetic,
            "n_train_images": n,
            "distill_seconds": (syn.meta.get("distill_seconds") if syn is not None else None),
            **self._common_metrics(preset, result),
            "peak_memory_mb": peak_memory_mb(self.device),
        }
        self._write_metrics(metrics)
        return metrics
