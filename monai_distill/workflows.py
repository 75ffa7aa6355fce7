"""Workflows that the bundles instantiate: distil (+ evaluate) a dataset, and evaluate a saved SyntheticSet.

Both are plain classes with a ``run()`` method, built by MONAI's ``ConfigParser`` from a bundle's
``train.json``/``evaluate.json`` so that every CLI override (``--dataset``, ``--ipc``, ...) is a config key.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import platform
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .checks import (
    OptionError,
    check_not_constant,
    check_num_classes,
    check_same_images,
    option_bool,
    option_dict,
    option_file,
    option_float,
    option_int,
    option_str,
)
from .components import (
    FlagDataset,
    ProtocolSGD,
    RegisteredMethod,
    RegistryNetwork,
    SetWriter,
    as_factory,
    build_component,
    check_network,
    check_optimizer,
    component_label,
    component_spec,
    component_target,
    factory_from_spec,
    method_class,
    registered_networks,
)
from .data import DataError, RealDataset, SyntheticSet, load_dataset
from .data.medmnist import MEDMNIST_SIZES, medmnist_info, medmnist_path
from .evaluation import EvalResult, EvaluationProtocol, OptimizerDefinition, class_prior
from .methods import DistillConfig, Distiller, get_method
from .networks import NETWORKS, get_network
from .plotting import line_plot
from .presets import Preset, deep_merge, get_preset, method_settings
from .progress import progress_bar
from .runs import RunError, guarded_run, refuse_multiprocess_without_config
from .trust import CARD_FILES, CardOptions, TrustCard, write_card
from .utils import (
    atomic_path,
    atomic_torch_save,
    atomic_write_json,
    check_output_dir,
    peak_memory_mb,
    reset_peak_memory,
    resolve_device,
    seed_everything,
)

__all__ = ["BuffersWorkflow", "DistillWorkflow", "EvaluateWorkflow", "InterruptedRun", "is_main_process"]

# Tests simulate a killed run: after this many iterations (and their checkpoint) the run stops with InterruptedRun.
INTERRUPT_ENV = "MONAI_DISTILL_INTERRUPT_AT"
CHECKPOINT_VERSION = 1

logger = logging.getLogger("monai_distill")

# Methods that use the network's embed() (penultimate features), and the option that switches that use on (None:
# always). The others need only forward(), so any classifier given as network_def works with them.
EMBED_METHODS: dict[str, str | None] = {"herding": None, "dm": None, "ptm": "overlap"}


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


def _check_device(device: Any) -> torch.device:
    """:func:`resolve_device`, with errors that name ``--device``."""
    try:
        return resolve_device(device)
    except (RuntimeError, ValueError, TypeError) as e:
        raise OptionError(f"--device: {' '.join(str(e).split())}") from None


def _check_preset_overrides(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """``--preset_overrides`` checked field by field against :class:`Preset` (known keys, types, ranges).

    Raises:
        KeyError: unknown preset name (lists the valid ones).
        OptionError: an unknown key, or a value of the wrong type or out of range.
    """
    base = get_preset(preset)
    valid = [f.name for f in dataclasses.fields(Preset) if f.name != "name"]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise OptionError(f"--preset_overrides: unknown key(s) {unknown}; valid keys: {', '.join(sorted(valid))}.")
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        label, default = f"--preset_overrides '{key}'", getattr(base, key)
        if value is None:
            out[key] = None
        elif isinstance(default, bool):
            out[key] = option_bool(value, label)
        elif isinstance(default, int):
            out[key] = option_int(value, label, minimum=1)
        elif isinstance(default, float):
            strict = key == "eval_lr"
            out[key] = option_float(value, label, minimum=0.0, maximum=1.0 if key == "momentum" else None,
                                    min_inclusive=not strict)
        else:
            out[key] = option_str(value, label)
    return out


def _first(value: Any, default: Any) -> Any:
    return default if value is None else value


def _protocol(value: Any) -> EvaluationProtocol:
    """The ``evaluation_def`` entry as a protocol object: an instance as it is, a class, partial or definition dict
    built without arguments; ``None``: the default protocol (the flat ``eval_*`` arguments).

    Raises:
        OptionError: the entry builds something without an ``evaluate`` method.
    """
    if value is None or isinstance(value, EvaluationProtocol):
        return value or EvaluationProtocol()
    built = value
    if isinstance(value, (Mapping, str, type, functools.partial)):  # a definition: build it without arguments
        factory = as_factory(value, "evaluation_def")
        built = factory() if factory is not None else EvaluationProtocol()
    if not callable(getattr(built, "evaluate", None)) or not all(
            hasattr(built, a) for a in ("network_def", "optimizer_def", "models", "epochs")):
        raise OptionError(f"--evaluation_def: {type(built).__name__} is not an evaluation protocol; subclass "
                          "monai_distill.evaluation.EvaluationProtocol (fields network_def, optimizer_def, models, "
                          "epochs and an evaluate(images, labels, test, arch, preset, seed, device, **kwargs) method).")
    return built


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
        eval_network_def: factory of the evaluation networks (config entry ``eval_network_def``, e.g. MONAI's
            ``ConfigParser`` partial of ``"_mode_": "callable"``); ``None``: the registry network of the flat flag.
            Data-dependent arguments it leaves unset are filled in (see :mod:`monai_distill.components`).
        eval_optimizer_def: optimiser of the evaluation networks without its params (``torch.optim.Adam`` partial);
            ``None``: the protocol's SGD (momentum, weight decay of the preset).
        dataset_def: the real data (config entry ``dataset_def``): a callable taking ``split`` that returns a
            :class:`~monai_distill.data.RealDataset`, or a class whose instances are such callables
            (:class:`~monai_distill.components.FlagDataset`); ``None``: ``dataset`` read by ``load_dataset``.
        evaluation_def: the evaluation protocol as one component (config entry ``evaluation_def``, whose default
            gathers ``eval_network_def``, ``eval_optimizer_def``, ``eval_models`` and ``eval_epochs``): an
            :class:`~monai_distill.evaluation.EvaluationProtocol` (or subclass) instance, class or definition; the
            fields it sets replace those four arguments, and its ``evaluate`` trains and tests every network.
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
        eval_network_def: Any = None,
        eval_optimizer_def: Any = None,
        dataset_def: Any = None,
        evaluation_def: Any = None,
    ) -> None:
        # Every option is checked here, before any data is read or time is spent (names, types, ranges); the
        # errors name the option. Files are checked last, by _check_dataset.
        refuse_multiprocess_without_config(f"the bundle ({type(self).__name__})")
        self.protocol = _protocol(evaluation_def)
        eval_network_def = _first(self.protocol.network_def, eval_network_def)
        eval_optimizer_def = _first(self.protocol.optimizer_def, eval_optimizer_def)
        eval_models = _first(self.protocol.models, eval_models)
        eval_epochs = _first(self.protocol.epochs, eval_epochs)
        self.output_dir = Path(str(option_str(output_dir, "output_dir")))
        self.dataset = option_str(dataset, "dataset", allow_none=True)
        # dataset_def: FlagDataset(@dataset) (the default) means "as without the entry"; another definition replaces
        # --dataset, and its label (class name and digest) stands for the dataset's name in records and configs.
        self.dataset_def = as_factory(dataset_def, "dataset_def")
        if isinstance(self.dataset_def, FlagDataset):
            self.dataset, self.dataset_def = self.dataset or self.dataset_def.name, None
        elif self.dataset_def is not None:
            self.dataset = component_label(self.dataset_def)
        self.dataset_dir = str(option_str(dataset_dir, "dataset_dir"))
        self.size = option_int(size, "size", minimum=1, allow_none=True)
        self.preset_name = str(option_str(preset, "preset"))
        self.seed = int(option_int(seed, "seed", minimum=0))  # type: ignore[arg-type]
        self.device = _check_device(device)
        self.eval_models = option_int(eval_models, "eval_models", minimum=1, allow_none=True)
        self.eval_epochs = option_int(eval_epochs, "eval_epochs", minimum=1, allow_none=True)
        self.preset_overrides = _check_preset_overrides(self.preset_name, option_dict(preset_overrides,
                                                                                      "preset_overrides"))
        self.progress = option_bool(progress, "progress")
        # The bundle defaults (RegistryNetwork of the flat flag, ProtocolSGD) mean "as without these entries".
        self.eval_network_def = as_factory(eval_network_def, "eval_network_def")
        self.eval_registry_name: str | None = None
        if isinstance(self.eval_network_def, RegistryNetwork):
            self.eval_registry_name, self.eval_network_def = self.eval_network_def.name, None
        optimizer = as_factory(eval_optimizer_def, "eval_optimizer_def")
        self.eval_optimizer_def: OptimizerDefinition | None = None if isinstance(optimizer, ProtocolSGD) else optimizer
        if self.eval_optimizer_def is not None:
            check_optimizer(self.eval_optimizer_def, "eval_optimizer_def")
        # label -> (factory, config entry) of the networks the config defines; registered while the workflow runs.
        self._definitions: dict[str, tuple[Any, str]] = {}

    def _define(self, factory: Any, entry: str) -> str:
        """The registry label of a defined network (registered by :meth:`_components` while the workflow runs)."""
        label = component_label(factory)
        self._definitions.setdefault(label, (factory, entry))  # one definition for both entries: registered once
        return label

    def _components(self) -> Any:
        """Context of a run: the networks the config defines, registered under their labels."""
        return registered_networks(self._definitions)

    def _component_specs(self) -> dict[str, Any]:
        """The config-defined components as JSON (recorded in metrics.json); empty with the registry defaults."""
        defined = {"network_def": getattr(self, "network_def", None), "eval_network_def": self.eval_network_def,
                   "eval_optimizer_def": self.eval_optimizer_def, "dataset_def": self.dataset_def,
                   "method_def": getattr(self, "method_def", None),
                   "writer_def": getattr(self, "writer_def", None),
                   "evaluation_def": None if type(self.protocol) is EvaluationProtocol else type(self.protocol)}
        return {entry: component_spec(factory) for entry, factory in defined.items() if factory is not None}

    def _check_dataset(self) -> None:
        """``--dataset`` exists: a readable ``.npz``/``.csv``, or a known MedMNIST flag whose file (at ``--size``,
        when known) is in ``--dataset_dir``. A ``dataset_def`` is checked when it first loads."""
        if self.dataset is None or self.dataset_def is not None:
            return
        suffix = Path(self.dataset).suffix.lower()
        if suffix in (".npz", ".csv"):
            option_file(self.dataset, "dataset")
            return
        if suffix:
            raise OptionError(
                f"--dataset must be a MedMNIST flag (e.g. breastmnist) or the path of a .npz or .csv file, "
                f"got '{self.dataset}'."
            )
        try:
            medmnist_info(self.dataset)
        except KeyError as e:
            raise OptionError(f"--dataset: {e.args[0]}") from None
        if self.size is not None:
            if self.size not in MEDMNIST_SIZES:
                raise OptionError(
                    f"--size must be one of {MEDMNIST_SIZES} (the sizes MedMNIST ships) for --dataset "
                    f"{self.dataset}, got {self.size}."
                )
            medmnist_path(self.dataset, self.dataset_dir, self.size)

    def _check_network(self, arch: str, option: str, ds: RealDataset, preset: Preset,
                       embed_for: str | None = None) -> None:
        """Build ``arch`` once for the data (cheap) so that an architecture that cannot take these images fails now,
        not after distillation. A config-defined network is first built apart and run once on blank images (its
        output must be one logit per class; ``embed_for`` names a method that also needs ``embed``), with the
        global random state left as it was, so that the run matches a registry network's bit for bit."""
        if arch in self._definitions:
            self._check_definition(arch, ds, embed_for)
            option = self._definitions[arch][1]
        try:
            get_network(arch, ds.spatial_dims, ds.in_channels, ds.num_classes, ds.spatial_size, width=preset.width,
                        depth=preset.depth, norm=preset.norm)
        except (ValueError, RuntimeError, TypeError) as e:
            raise OptionError(
                f"--{option} {arch} cannot take the images of '{ds.source or ds.name}' (shape "
                f"{(ds.in_channels, *ds.spatial_size)}): {' '.join(str(e).split())}"
            ) from None

    def _check_definition(self, label: str, ds: RealDataset, embed_for: str | None = None) -> None:
        """:func:`~monai_distill.components.check_network` for a config-defined network (no change to the RNG)."""
        factory, entry = self._definitions[label]
        check_network(factory, entry, ds.spatial_dims, ds.in_channels, ds.num_classes, ds.spatial_size,
                      embed_for=embed_for)

    @staticmethod
    def _check_split(ds: RealDataset) -> None:
        """Data checks the loaders cannot make alone: a split of constant (e.g. all-zero) images."""
        check_not_constant(ds.images, f"'{ds.source or ds.name}' ({ds.split} split)")

    def _dataset_ref(self) -> str | None:
        """What ``--dataset`` must be to load this data again: the flag, or the absolute path of a user file."""
        if self.dataset_def is not None:
            return None  # the set records its dataset_def instead
        if self.dataset is None or Path(str(self.dataset)).suffix == "":
            return self.dataset
        return str(Path(str(self.dataset)).resolve())

    def _preset(self, spatial_dims: int) -> Preset:
        # eval_models/eval_epochs are preset fields too, so the recorded preset is the one that ran.
        overrides = {**self.preset_overrides, "eval_models": self.eval_models, "eval_epochs": self.eval_epochs}
        return get_preset(self.preset_name, spatial_dims, **overrides)

    def _load(self, split: str) -> RealDataset:
        if self.dataset_def is None:
            return load_dataset(self.dataset, split=split, dataset_dir=self.dataset_dir, size=self.size or 28)
        values = {"split": split, "dataset_dir": self.dataset_dir, "size": self.size or 28}
        ds = build_component(self.dataset_def, "dataset_def", values, what=f"the {split} split")
        if not isinstance(ds, RealDataset) and callable(ds) and not isinstance(ds, type):
            # A class whose constructor takes no split builds a data source; the source is called per split.
            ds = build_component(ds, "dataset_def", values, what=f"the {split} split")
        if not isinstance(ds, RealDataset):
            raise OptionError(f"--dataset_def {component_target(self.dataset_def)}: returned "
                              f"{type(ds).__name__} for split '{split}', expected a monai_distill.data.RealDataset.")
        return ds

    def _dataset_from_set(self, syn: SyntheticSet) -> None:
        """Read the set's data again when no dataset is given: its ``dataset_def`` or its ``--dataset``."""
        if self.dataset or self.dataset_def is not None:
            return
        if syn.meta.get("dataset_def"):
            self.dataset_def = factory_from_spec(syn.meta["dataset_def"], "dataset_def")
            self.dataset = component_label(self.dataset_def)
        else:
            self.dataset = syn.meta.get("dataset_ref") or syn.meta.get("dataset")

    def _optional_val(self, why_missing: str) -> RealDataset | None:
        """The val split, or ``None`` with a warning (``why_missing``) when the dataset has none."""
        try:
            return self._load("val")
        except (FileNotFoundError, KeyError, ValueError, DataError) as e:
            logger.warning("%s (%s).", why_missing, e)
            return None

    def _write_metrics(self, metrics: dict[str, Any]) -> Path:
        path = self.output_dir / "metrics.json"
        metrics["status"] = "finished"  # written last: a metrics.json without it is not a finished run's
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


class _CardMixin:
    """Writes the trust card (:mod:`monai_distill.trust`) of a set beside it: ``card.json``, ``card.md``,
    ``card_neighbours.png``."""

    card_options: CardOptions
    output_dir: Path
    seed: int
    device: torch.device

    def _card_builder(self, syn: SyntheticSet, train: RealDataset, test: RealDataset | None, arch: str,
                      preset: Preset) -> TrustCard:
        test = test if test is not None else self._load("test")  # type: ignore[attr-defined]
        options = self.card_options
        buffer_dir = getattr(self, "buffer_dir", None)
        if options.cache_dir is None and buffer_dir:  # the real-data networks live beside the experts
            options = dataclasses.replace(options, cache_dir=str(Path(buffer_dir) / "card_networks"))
        val = self._optional_val("trust card: no val split to train the calibration reference on")  # type: ignore[attr-defined]
        return TrustCard(syn, train, test, val, arch, preset, self.seed, self.device, options)

    def _write_card(self, builder: TrustCard, settings: dict[str, Any], provenance: dict[str, Any],
                    keep_going: bool = True) -> dict[str, Any]:
        """Build and write the card; return its summary for ``metrics.json``. With ``keep_going`` (after a
        distillation) a failure is logged and recorded as an ``error`` entry: the set is saved and valid and must
        not be discarded for its card."""
        try:
            if not builder.observed:
                builder.train_targets(builder.options.target_models)
            card = builder.build(settings, provenance)
            if is_main_process():
                write_card(card, builder, self.output_dir)
                logger.info("wrote the trust card %s (%.1f s)", self.output_dir / CARD_FILES[1], card["card_seconds"])
            return card_summary(card)
        except (RuntimeError, ValueError, OSError) as e:
            if not keep_going:
                raise
            logger.error("trust card failed (%s: %s); the synthetic set is saved.", type(e).__name__, e)
            return {"error": f"{type(e).__name__}: {e}"}


def _card_settings(syn: SyntheticSet) -> dict[str, Any]:
    """What a set depends on, for the card's hash: its config hash (method, options, seeds, preset, networks) and
    its expert buffer (the recipe's directory name), the same whether the card is written by the run or later."""
    buffers = syn.meta.get("buffer_dir")
    return {"config_hash": syn.meta.get("config_hash"), "buffers": Path(buffers).name if buffers else None,
            "method": syn.meta.get("method"), "seed": syn.meta.get("seed")}


def card_summary(card: dict[str, Any]) -> dict[str, Any]:
    """The figures of a card that ``metrics.json`` repeats: hash, seconds, near-copies, attack AUCs."""
    out = {"hash": card["hash"], "card_seconds": card["card_seconds"],
           "n_near_copies": card["nearness"]["n_near_copies"]}
    for target, attacks in card["membership"].items():
        if isinstance(attacks, dict):
            for name in ("loss", "calibrated"):
                if name in attacks:
                    out[f"mia_auc_{target}_{name}"] = attacks[name]["auc"]
    return out


def _train_prior(syn: SyntheticSet) -> torch.Tensor | None:
    """The train split's class frequencies recorded in a set (sets saved before they were recorded have none)."""
    prior = syn.meta.get("train_class_prior")
    return None if prior is None else torch.tensor(prior, dtype=torch.float32)


class InterruptedRun(RuntimeError):
    """Raised after ``$MONAI_DISTILL_INTERRUPT_AT`` iterations: a stand-in for a killed run in resume tests."""


@dataclass
class _Progress:
    """What a checkpoint keeps besides the distiller: where the loop is and what it logged."""

    iteration: int = 0
    seconds: float = 0.0  # distillation wall-clock, evaluations excluded, summed over resumed runs
    history: list[dict[str, float]] = field(default_factory=list)
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _postfix(losses: dict[str, float]) -> dict[str, str]:
    """Short progress-bar fields: every loss term, the target epoch ("end step") and the learned lr."""
    names = {"end_epoch": "end", "syn_steps": "steps"}
    return {names.get(k, k): (f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in losses.items()}


class DistillWorkflow(_CardMixin, _Workflow):
    """Distil ``dataset`` with ``method`` into ``ipc`` images per class, save it, then evaluate it.

    Writes ``synthetic.pt`` (a :class:`SyntheticSet`), ``synthetic.png`` (class-by-ipc grid) and
    ``metrics.json`` into ``output_dir``; iterative methods also write ``checkpoint.pt`` (atomically, every
    ``checkpoint_every`` iterations), ``losses.csv`` and ``loss_curve.png``, and with ``eval_every`` the evaluation
    accuracy over distillation wall-clock time (``metrics.json["eval_history"]``, ``accuracy_over_time.png``) and a
    PNG of the synthetic set at each evaluation (``progress/synthetic_itXXXXX.png``).

    Args:
        dataset: a MedMNIST flag, or the path of a user ``.npz`` (MedMNIST keys) or volume ``.csv`` (path,label).
        output_dir: where outputs go (created; must be writable).
        method: registered method name.
        ipc: images per class.
        size: MedMNIST image size (28, 64, 128, 224).
        arch: registry network used inside the method (shortcut of ``network_def``).
        eval_arch: registry network of the evaluation protocol (default: the method's network).
        network_def: factory of the network used inside the method (config entry ``network_def``: a MONAI
            ``"_mode_": "callable"`` definition, a class or ``'module.Class'``); replaces ``arch``. Data-dependent
            arguments it leaves unset are filled in; herding, DM and PTM's overlap term also need ``embed`` and
            ``classifier`` (:class:`~monai_distill.networks.DistillNet`).
        method_options: method-specific settings, merged over ``configs/<dataset>.json`` (see
            :func:`~monai_distill.presets.method_settings`).
        resume: continue from ``output_dir/checkpoint.pt`` (iterative methods); the final ``synthetic.pt`` is the
            same as an uninterrupted run's on CPU.
        evaluate: run the evaluation protocol after distillation.
        buffer_dir: root of the expert trajectory buffers (trajectory methods build missing experts there).
        checkpoint_every: iterations between checkpoints (0: only at the end).
        eval_every: iterations between evaluations during distillation (0: only the final one).
        card: write the trust card beside the set (:mod:`monai_distill.trust`; the attack reuses the evaluation
            networks).
        card_options: :class:`~monai_distill.trust.CardOptions` fields.
        method_def: the distiller (config entry ``method_def``): a :class:`~monai_distill.methods.Distiller`
            subclass or a definition of one whose arguments are method options; replaces ``method``.
        writer_def: writes the finished set (config entry ``writer_def``), called as ``writer(syn, output_dir)``;
            default :class:`~monai_distill.components.SetWriter` (``synthetic.pt`` and ``synthetic.png``).
        common: ``dataset_dir``, ``preset``, ``seed``, ``device``, ``eval_models``, ``eval_epochs``,
            ``preset_overrides``, ``progress``, ``eval_network_def``, ``eval_optimizer_def``, ``dataset_def`` (see
            :class:`_Workflow`).
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
        buffer_dir: str = "runs/buffers",
        checkpoint_every: int = 50,
        eval_every: int = 0,
        network_def: Any = None,
        card: bool = True,
        card_options: dict[str, Any] | None = None,
        method_def: Any = None,
        writer_def: Any = None,
        **common: Any,
    ) -> None:
        super().__init__(output_dir, dataset=dataset, size=size, **common)
        self.card = option_bool(card, "card")
        self.card_options = CardOptions.from_dict(option_dict(card_options, "card_options"))
        # Fail on names and values before any data is read or time is spent.
        if self.dataset is None:
            raise OptionError("--dataset is required: a MedMNIST flag, or the path of a .npz or .csv file.")
        # method_def: RegisteredMethod(@method) (the default) is --method; another definition is a Distiller
        # subclass whose bound arguments are method options (under --method_options).
        self.method_def = as_factory(method_def, "method_def")
        bound: dict[str, Any] = {}
        if isinstance(self.method_def, RegisteredMethod):
            method, self.method_def = self.method_def.name or method, None
        if self.method_def is None:
            self.method_cls = get_method(str(option_str(method, "method")))
        else:
            self.method_cls, bound = method_class(self.method_def)
        self.method = self.method_cls.name
        # writer_def: a writer object or function, or a class (with its arguments) built once here.
        self.writer_def = as_factory(writer_def, "writer_def")
        if self.writer_def is None or isinstance(self.writer_def, SetWriter):
            self.writer_def, self.writer = None, SetWriter()
        else:
            func = getattr(self.writer_def, "func", self.writer_def)
            self.writer = build_component(self.writer_def, "writer_def", {}) if isinstance(func, type) \
                else self.writer_def
        # A defined network replaces the registry name of its flat flag by its label (e.g. classifier@1f2e3d4c);
        # the evaluation network defaults to the method's network, as eval_arch defaults to arch.
        self.network_def = as_factory(network_def, "network_def")
        if isinstance(self.network_def, RegistryNetwork):
            arch, self.network_def = self.network_def.name or arch, None
        eval_arch = self.eval_registry_name or option_str(eval_arch, "eval_arch", allow_none=True)
        if self.network_def is not None:
            self.arch = self._define(self.network_def, "network_def")
        else:
            self.arch = str(option_str(arch, "arch")).lower()
            NETWORKS.get(self.arch)
        if self.eval_network_def is not None:
            self.eval_arch = self._define(self.eval_network_def, "eval_network_def")
        elif eval_arch:
            self.eval_arch = str(eval_arch).lower()
            NETWORKS.get(self.eval_arch)
        else:
            self.eval_arch = self.arch
        self.ipc = int(option_int(ipc, "ipc", minimum=1))  # type: ignore[arg-type]
        self.method_options = {**bound, **option_dict(method_options, "method_options")}
        self.resume = option_bool(resume, "resume")
        self.evaluate = option_bool(evaluate, "evaluate")
        self.buffer_dir = str(option_str(buffer_dir, "buffer_dir"))
        self.checkpoint_every = option_int(checkpoint_every, "checkpoint_every", minimum=0, allow_none=True) or 0
        self.eval_every = option_int(eval_every, "eval_every", minimum=0, allow_none=True) or 0
        self._check_dataset()

    @property
    def checkpoint_path(self) -> Path:
        return self.output_dir / "checkpoint.pt"

    def _options(self, train: RealDataset, preset: Preset) -> dict[str, Any]:
        """``configs/`` settings for (dataset, method, ipc, preset), then the bundle's ``method_options``."""
        buffers = getattr(self.method_cls, "uses_buffers", False)
        opts = method_settings(self.dataset, self.method, self.ipc, preset.name, n_train=len(train),
                               spatial_dims=train.spatial_dims, shared=buffers)
        if buffers:
            opts.setdefault("buffer_dir", self.buffer_dir)
        return deep_merge(opts, self.method_options)

    def distiller(self) -> tuple[Distiller, RealDataset, Preset, dict[str, Any]]:
        """Load (and check) the train split and build the configured distiller (not yet initialised)."""
        train = self._load("train")
        self._check_split(train)
        preset = self._preset(train.spatial_dims)
        options = self._options(train, preset)
        cfg = DistillConfig(ipc=self.ipc, arch=self.arch, preset=preset, seed=self.seed, options=options)
        return self.method_cls(train, cfg, self.device), train, preset, options

    FINAL_ARTEFACTS: tuple[str, ...] = ("synthetic.pt", "synthetic.png", "metrics.json", *CARD_FILES)

    def run(self) -> dict[str, Any]:
        """Distil (checkpointing, evaluating along the way), save, evaluate; return the metrics of ``metrics.json``.

        The output directory is locked for the run and ``status.json`` records it; a failed run moves the final
        artefacts it wrote into ``failed/`` (see :func:`~monai_distill.runs.guarded_run`).
        """
        with guarded_run(self.output_dir, self.FINAL_ARTEFACTS, extra={"workflow": type(self).__name__}), \
                self._components():
            return self._run()

    def _embed_for(self, distiller: Distiller) -> str | None:
        """The method's name when it uses the network's ``embed`` with these options (:data:`EMBED_METHODS`)."""
        if self.method not in EMBED_METHODS:
            return None
        switch = EMBED_METHODS[self.method]
        on = switch is None or bool(getattr(getattr(distiller, "opts", None), switch, False))
        return self.method if on else None

    def _run(self) -> dict[str, Any]:
        check_output_dir(self.output_dir)
        seed_everything(self.seed)
        distiller, train, preset, options = self.distiller()
        config = self._config(preset, options)
        reset_peak_memory(self.device)
        test = self._load("test") if (self.evaluate or self.eval_every) else None
        self._check_network(self.arch, "arch", train, preset, embed_for=self._embed_for(distiller))
        if self.evaluate or self.eval_every:
            self._check_network(self.eval_arch, "eval_arch", train, preset)
        if test is not None:  # before any distillation time is spent
            self._check_split(test)
            where = f"the test split of '{test.source or test.name}'"
            check_same_images(test.images.shape[1:], train.images.shape[1:], where, "the train split")
            check_num_classes(test.num_classes, train.num_classes, where, "the train split")

        start = time.perf_counter()
        distiller.init_synthetic()
        progress = self._restore(distiller, config) if self.resume else _Progress()
        if progress.iteration == 0:
            progress.seconds = time.perf_counter() - start  # set-up (experts, init) counts as distillation time
        if self.eval_every and progress.iteration == 0 and distiller.num_iterations:
            self._evaluate_during(distiller, test, preset, config, progress)
        self._loop(distiller, test, preset, config, progress)

        syn = self._finish(distiller, preset, config)
        if distiller.num_iterations:
            self._write_losses(progress)
        metrics: dict[str, Any] = {
            "method": self.method,
            "dataset": train.name,
            "ipc": self.ipc,
            "arch": self.arch,
            "n_synthetic": len(syn),
            "learned_lr": syn.lr,
            "distill_seconds": progress.seconds if distiller.num_iterations else time.perf_counter() - start,
            "iterations": progress.iteration,
            "resumed_from": progress.resumed_from,
            "config": config,
            "data": train.describe() | {"test_n_images": len(test) if test is not None else None},
        }
        if progress.history:
            metrics["final_losses"] = progress.history[-1]
        card = self._card_builder(syn, train, test, self.eval_arch, preset) if self.card else None
        if self.evaluate:
            result = self.protocol.evaluate_set(syn, test, self.eval_arch, preset, self.seed, self.device,
                                                progress=self.progress, target_prior=_train_prior(syn),
                                                optimizer=self.eval_optimizer_def,
                                                on_model=card.observe if card is not None else None)
            metrics.update(self._common_metrics(preset, result))
            if self.eval_every:
                self._record_eval(progress, result, preset)
                self._plot_accuracy(progress)
        else:
            metrics.update(preset=preset.name, seed=self.seed, device=str(self.device), machine=_machine())
        if progress.eval_history:
            metrics["eval_history"] = progress.eval_history
        if card is not None:
            buffers = getattr(distiller, "experts", None)
            if buffers is not None and hasattr(distiller, "expert_network"):
                card.real_network(distiller.expert_network(0), f"expert 0 of {buffers.directory.name}, last epoch")
            summary = self._write_card(card, _card_settings(syn), {
                "device": str(self.device), "machine": _machine(), "distill_seconds": metrics["distill_seconds"],
                "config": config})
            metrics["card_seconds"] = summary.pop("card_seconds", None)  # a timing, beside the other timings
            metrics["card"] = summary
        metrics["peak_memory_mb"] = peak_memory_mb(self.device)
        self._write_metrics(metrics)
        return metrics

    # ------------------------------------------------------------------ the loop
    def _loop(self, distiller: Distiller, test: RealDataset | None, preset: Preset, config: dict[str, Any],
              progress: _Progress) -> None:
        n = distiller.num_iterations
        stop_at = int(os.environ.get(INTERRUPT_ENV, "0") or 0)
        bar = progress_bar(range(progress.iteration, n), initial=progress.iteration, total=n, desc=self.method,
                           enabled=self.progress)
        for it in bar:
            tick = time.perf_counter()
            losses = distiller.step(it)
            progress.seconds += time.perf_counter() - tick
            progress.iteration = it + 1
            progress.history.append({"iteration": it, **losses})
            bar.set_postfix(_postfix(losses))
            done = progress.iteration
            if self.eval_every and done % self.eval_every == 0 and done < n:
                self._evaluate_during(distiller, test, preset, config, progress)
            if done == n or (self.checkpoint_every and done % self.checkpoint_every == 0):
                self._checkpoint(distiller, config, progress)
            if stop_at and done == stop_at and done < n:
                raise InterruptedRun(f"{self.method}: interrupted after iteration {done} (${INTERRUPT_ENV}).")
        bar.close()

    def _finish(self, distiller: Distiller, preset: Preset, config: dict[str, Any]) -> SyntheticSet:
        syn = distiller.synthetic_set()
        syn.meta.update(
            preset=preset.name,
            config_hash=_config_hash(config),
            dataset_ref=self._dataset_ref(),
            size=self.size,
            train_class_prior=class_prior(distiller.real.labels, distiller.real.num_classes).tolist(),
        )
        if self.network_def is not None:  # the label in meta["arch"] is no registry name: say what it stands for
            syn.meta["network_def"] = component_spec(self.network_def)
        if self.dataset_def is not None:
            syn.meta["dataset_def"] = component_spec(self.dataset_def)
        if is_main_process():
            self.writer(syn, self.output_dir)
            if not (self.output_dir / "synthetic.pt").is_file():
                raise OptionError(f"--writer_def {component_target(self.writer_def)}: wrote no synthetic.pt into "
                                  f"'{self.output_dir}'; a writer must save the set (call SetWriter.__call__).")
        return syn

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, distiller: Distiller, config: dict[str, Any], progress: _Progress) -> None:
        if not is_main_process():
            return
        state = {
            "format_version": CHECKPOINT_VERSION,
            "method": self.method,
            "config_hash": _config_hash(config),
            "distiller": distiller.state_dict(),
            "progress": {
                "iteration": progress.iteration,
                "seconds": progress.seconds,
                "history": progress.history,
                "eval_history": progress.eval_history,
            },
            "rng": _rng_state(),
        }
        atomic_torch_save(state, self.checkpoint_path)

    def _restore(self, distiller: Distiller, config: dict[str, Any]) -> _Progress:
        """Load ``checkpoint.pt`` into ``distiller``; a missing checkpoint starts from scratch (logged)."""
        if not self.checkpoint_path.is_file():
            logger.info("resume: no checkpoint in %s, starting from iteration 0", self.output_dir)
            return _Progress()
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise RunError(
                f"--resume: checkpoint '{self.checkpoint_path}' cannot be read ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:200]}); it is truncated or corrupt. Delete it to start from iteration 0, "
                "or run without --resume into another --output_dir."
            ) from e
        needed = {"config_hash", "distiller", "progress", "rng"}
        if not isinstance(state, dict) or not needed <= set(state):
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise RunError(
                f"--resume: '{self.checkpoint_path}' is not a checkpoint of this workflow (expected the keys "
                f"{sorted(needed)}, found {found}); delete it or use another --output_dir."
            )
        if state.get("config_hash") != _config_hash(config):
            raise ValueError(
                f"{self.checkpoint_path} was written by a run with another configuration (method, dataset, ipc, "
                "preset or options differ); resume with the same settings or use a new output_dir."
            )
        distiller.load_state_dict(state["distiller"])
        _set_rng_state(state["rng"])
        p = state["progress"]
        logger.info("resumed %s from iteration %d", self.method, p["iteration"])
        return _Progress(p["iteration"], p["seconds"], list(p["history"]), list(p["eval_history"]), p["iteration"])

    # ------------------------------------------------------------------ evaluation over time
    def _evaluate_during(self, distiller: Distiller, test: RealDataset | None, preset: Preset,
                         config: dict[str, Any], progress: _Progress) -> None:
        syn = distiller.synthetic_set()
        if is_main_process():
            syn.to_png(self.output_dir / "progress" / f"synthetic_it{progress.iteration:05d}.png")
        result = self.protocol.evaluate_set(syn, test, self.eval_arch, preset, self.seed, self.device, progress=False,
                                            optimizer=self.eval_optimizer_def)
        self._record_eval(progress, result, preset)
        self._plot_accuracy(progress)
        self._write_losses(progress)

    @staticmethod
    def _record_eval(progress: _Progress, result: EvalResult, preset: Preset) -> None:
        s = result.summary
        progress.eval_history.append({
            "iteration": progress.iteration,
            "distill_seconds": progress.seconds,
            "test_acc_mean": s["test_acc_mean"],
            "test_acc_std": s["test_acc_std"],
            "test_balanced_acc_mean": s["test_balanced_acc_mean"],
            "test_auc_mean": s["test_auc_mean"],
            "n_eval_models": len(result.per_model),
        })

    def _plot_accuracy(self, progress: _Progress) -> None:
        if not is_main_process() or not progress.eval_history:
            return
        xs = [e["distill_seconds"] for e in progress.eval_history]
        ys = [100 * e["test_balanced_acc_mean"] for e in progress.eval_history]
        line_plot({self.method: (xs, ys)}, self.output_dir / "accuracy_over_time.png", markers=True,
                  title=f"{self.method}: test balanced accuracy during distillation", xlabel="distillation seconds",
                  ylabel="balanced accuracy %")

    def _write_losses(self, progress: _Progress) -> None:
        """``losses.csv`` (every iteration) and ``loss_curve.png`` (every loss term, log scale where positive)."""
        if not is_main_process() or not progress.history:
            return
        keys = list(dict.fromkeys(k for row in progress.history for k in row))
        with atomic_path(self.output_dir / "losses.csv") as tmp:
            lines = [",".join(keys)] + [",".join(str(row.get(k, "")) for k in keys) for row in progress.history]
            tmp.write_text("\n".join(lines) + "\n")
        skip = {"iteration", "end_epoch", "syn_steps", "lr"}
        its = [row["iteration"] for row in progress.history]
        series = {k: (its, [row.get(k, float("nan")) for row in progress.history]) for k in keys if k not in skip}
        positive = all(v > 0 for _, ys in series.values() for v in ys if v == v)
        line_plot(series, self.output_dir / "loss_curve.png", title=f"{self.method}: loss terms",
                  xlabel="iteration", ylabel="loss", log_y=positive)

    def _config(self, preset: Preset, options: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "size": self.size,
            "method": self.method,
            "ipc": self.ipc,
            "seed": self.seed,
            "arch": self.arch,
            "eval_arch": self.eval_arch,
            "preset": preset.to_dict(),
            "method_options": self.method_options if options is None else options,
            **self._component_specs(),
        }


class BuffersWorkflow(DistillWorkflow):
    """Build the expert trajectory buffer that ``method`` would use, and nothing else (``buffers.json``).

    Takes the same arguments as :class:`DistillWorkflow`, so that the buffer settings come from the same
    ``configs/`` entry and ``method_options``; under ``torchrun`` the experts are split across ranks. Writes
    ``output_dir/buffers.json`` (directory, settings, experts trained by this run, seconds).
    """

    FINAL_ARTEFACTS = ("buffers.json",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not getattr(self.method_cls, "uses_buffers", False):
            raise OptionError(
                f"--method '{self.method}' does not use expert buffers; use mtt, ftd, datm, ptm or hoptm."
            )

    def _run(self) -> dict[str, Any]:
        check_output_dir(self.output_dir)
        seed_everything(self.seed)
        distiller, train, preset, _ = self.distiller()
        if self.arch in self._definitions:  # the experts are trained on it: it must fit the data first
            self._check_definition(self.arch, train)
        start = time.perf_counter()
        buf = distiller.expert_buffer()
        trained = buf.build(train, distiller.net_factory, distiller.buffer_settings, preset, self.device,
                            progress=self.progress)
        buf.load(distiller.buffer_settings)
        info = {
            "method": self.method,
            "dataset": train.name,
            "buffer_dir": str(buf.directory),
            "num_experts": buf.num_experts,
            "epochs": buf.num_epochs,
            "num_params": buf.num_params,
            "settings": distiller.buffer_settings.to_dict(),
            "trained_now": trained,
            "seconds": time.perf_counter() - start,
            "device": str(self.device),
            "machine": _machine(),
        }
        if is_main_process():
            atomic_write_json(info, self.output_dir / "buffers.json")
        return info


class EvaluateWorkflow(_Workflow):
    """Evaluate a saved SyntheticSet (or the whole real train split) with the protocol, on any architecture.

    Args:
        synthetic: path of a ``synthetic.pt``, or ``full`` to train on the whole real train split (upper bound).
        output_dir: where ``metrics.json`` goes.
        arch: registry evaluation network (cross-architecture); default the set's ``arch``. ``eval_network_def``
            (see :class:`_Workflow`) replaces it with any network.
        dataset: dataset flag/path; default the one recorded in the set.
        dataset_dir: directory of the dataset files.
        size: image size; default the one recorded in the set.
        select_on_val: with ``synthetic=full``, test each network at the epoch that scores best on the val split
            (balanced accuracy), as MedMNIST's baselines select their models; synthetic sets use the last epoch
            (the distillation protocol).
        common: ``preset``, ``seed``, ``device``, ``eval_models``, ``eval_epochs``, ``preset_overrides``,
            ``progress``, ``eval_network_def``, ``eval_optimizer_def`` (see :class:`_Workflow`).
    """

    def __init__(
        self,
        synthetic: str,
        output_dir: str,
        arch: str | None = None,
        dataset: str | None = None,
        size: int | None = None,
        select_on_val: bool = True,
        **common: Any,
    ) -> None:
        super().__init__(output_dir, dataset=dataset, size=size, **common)
        self.select_on_val = option_bool(select_on_val, "select_on_val")
        self.synthetic = str(option_str(synthetic, "synthetic"))
        arch_name = self.eval_registry_name or option_str(arch, "arch", allow_none=True)
        self.arch = str(arch_name).lower() if arch_name else None
        if self.eval_network_def is not None:
            self.arch = self._define(self.eval_network_def, "eval_network_def")
        elif self.arch:
            NETWORKS.get(self.arch)
        if self.synthetic.lower() == "full":
            if self.dataset is None:
                raise OptionError("--synthetic full trains on the real train split, which needs --dataset.")
        else:
            option_file(self.synthetic, "synthetic")
        self._check_dataset()

    FINAL_ARTEFACTS: tuple[str, ...] = ("metrics.json",)

    def _full_val(self) -> RealDataset | None:
        """The val split that picks each full-data network's epoch (``select_on_val``), if the dataset has one."""
        if not self.select_on_val:
            return None
        return self._optional_val("no val split to select the full-data networks' epoch on; using the last epoch")

    def run(self) -> dict[str, Any]:
        """Evaluate and write ``metrics.json``; return the metrics (``output_dir`` is locked meanwhile and
        ``status.json`` records the run, see :func:`~monai_distill.runs.guarded_run`)."""
        with guarded_run(self.output_dir, self.FINAL_ARTEFACTS, extra={"workflow": type(self).__name__}), \
                self._components():
            return self._run()

    def _run(self) -> dict[str, Any]:
        check_output_dir(self.output_dir)
        full = self.synthetic.lower() == "full"
        syn = None if full else SyntheticSet.load(self.synthetic)
        if syn is not None:
            self._dataset_from_set(syn)
            self.size = self.size or syn.meta.get("size")
        if not self.dataset:
            raise ValueError("the dataset is not recorded in the synthetic set; pass --dataset.")
        arch = self.arch or (syn.meta.get("arch") if syn is not None else None) or "convnet"
        if arch not in NETWORKS:  # a set distilled with a network_def records its label, which is no registry name
            made_by = (syn.meta.get("network_def") or {}).get("_target_") if syn is not None else None
            raise OptionError(
                f"--synthetic '{self.synthetic}' was distilled with the network of network_def"
                f"{f' ({made_by})' if made_by else ''}, recorded as '{arch}'; choose the evaluation network with "
                "--arch (one of " + ", ".join(NETWORKS.names()) + ") or --eval_network_def."
            )
        test = self._load("test")
        self._check_split(test)
        if syn is not None:  # before any network is trained: the set must fit the data it is tested on
            where = f"the test split of '{test.source or test.name}'"
            check_num_classes(syn.num_classes, test.num_classes, f"synthetic set '{self.synthetic}'", where)
            check_same_images(syn.images.shape[1:], test.images.shape[1:], f"synthetic set '{self.synthetic}'", where)
        preset = self._preset(test.spatial_dims)
        self._check_network(arch, "arch", test, preset)
        reset_peak_memory(self.device)
        if full:
            train = self._load("train")
            self._check_split(train)
            result = self.protocol.evaluate(
                train.images,
                train.labels,
                test,
                arch,
                preset,
                self.seed,
                self.device,
                epochs=self.eval_epochs or preset.eval_epochs_full,
                progress=self.progress,
                target_prior=class_prior(train.labels, train.num_classes),
                val=self._full_val(),
                optimizer=self.eval_optimizer_def,
            )
            method, ipc, n = "full", None, len(train)
        else:
            result = self.protocol.evaluate_set(
                syn,
                test,
                arch,
                preset,
                self.seed,
                self.device,
                progress=self.progress,
                target_prior=_train_prior(syn),
                optimizer=self.eval_optimizer_def,
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
            **self._component_specs(),
        }
        self._write_metrics(metrics)
        return metrics


class CardWorkflow(_CardMixin, _Workflow):
    """Write the trust card of an existing ``synthetic.pt`` (``card.json``, ``card.md``, ``card_neighbours.png``).

    The membership attack trains ``card_options.target_models`` networks on the set with the evaluation protocol
    (a distillation run instead attacks its own evaluation networks).

    Args:
        synthetic: path of a ``synthetic.pt``.
        output_dir: where the card goes; default the set's directory.
        arch: registry network of the attack targets and the real-data network; default the set's ``arch``.
        dataset: dataset flag/path; default the one recorded in the set.
        size: image size; default the one recorded in the set.
        card_options: :class:`~monai_distill.trust.CardOptions` fields.
        common: ``preset`` (default the set's), ``seed`` (default the set's), ``device``, ``dataset_dir``,
            ``eval_models``, ``eval_epochs``, ``preset_overrides``, ``progress`` (see :class:`_Workflow`).
    """

    def __init__(self, synthetic: str, output_dir: str | None = None, arch: str | None = None,
                 dataset: str | None = None, size: int | None = None, card_options: dict[str, Any] | None = None,
                 **common: Any) -> None:
        self.synthetic = str(option_str(synthetic, "synthetic"))
        option_file(self.synthetic, "synthetic")
        out = option_str(output_dir, "output_dir", allow_none=True) or str(Path(self.synthetic).parent)
        # preset and seed default to the set's own (None), read when the set is loaded.
        self._preset_given = common.get("preset") is not None
        self._seed_given = common.get("seed") is not None
        common = {k: v for k, v in common.items() if not (k in ("preset", "seed") and v is None)}
        super().__init__(out, dataset=dataset, size=size, **common)
        self.arch = option_str(arch, "arch", allow_none=True)
        if self.arch:
            NETWORKS.get(str(self.arch).lower())
        self.card_options = CardOptions.from_dict(option_dict(card_options, "card_options"))
        self._check_dataset()

    FINAL_ARTEFACTS: tuple[str, ...] = CARD_FILES

    def run(self) -> dict[str, Any]:
        """Build and write the card; return its summary (the output directory is locked meanwhile)."""
        with guarded_run(self.output_dir, self.FINAL_ARTEFACTS, extra={"workflow": type(self).__name__}):
            return self._run()

    def _run(self) -> dict[str, Any]:
        check_output_dir(self.output_dir)
        syn = SyntheticSet.load(self.synthetic)
        self._dataset_from_set(syn)
        self.size = self.size or syn.meta.get("size")
        if not self.dataset:
            raise OptionError("the dataset is not recorded in the synthetic set; pass --dataset.")
        arch = str(self.arch or syn.meta.get("arch") or "convnet").lower()
        if arch not in NETWORKS:
            raise OptionError(f"--synthetic '{self.synthetic}' records the network '{arch}', which is no registry "
                              "name; choose one with --arch (" + ", ".join(NETWORKS.names()) + ").")
        train = self._load("train")
        self._check_split(train)
        where = f"the train split of '{train.source or train.name}'"
        check_num_classes(syn.num_classes, train.num_classes, f"synthetic set '{self.synthetic}'", where)
        check_same_images(syn.images.shape[1:], train.images.shape[1:], f"synthetic set '{self.synthetic}'", where)
        if not self._preset_given and syn.meta.get("preset"):
            self.preset_name = str(syn.meta["preset"])  # the protocol the set was made for
        preset = self._preset(train.spatial_dims)
        if not self._seed_given and syn.meta.get("seed") is not None:
            self.seed = int(syn.meta["seed"])
        seed_everything(self.seed)
        builder = self._card_builder(syn, train, None, arch, preset)
        return self._write_card(builder, _card_settings(syn), {
            "device": str(self.device), "machine": _machine(), "distill_seconds": syn.meta.get("distill_seconds"),
            "synthetic": str(Path(self.synthetic).resolve())}, keep_going=False)
