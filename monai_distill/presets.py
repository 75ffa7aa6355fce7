"""Named hyper-parameter presets for distillation and the evaluation protocol.

``paper`` follows the seeds (PTM, HoP-TM, Histo-DD) and the MTT line of work: K = 10 evaluation networks,
1000 epochs on the synthetic set, ConvNet width 128, depth 3, SGD (momentum 0.9, weight decay 5e-4), lr 0.01
(or the learned lr), lr x0.1 at half, DSA on. ``quick`` keeps every step of that protocol but is sized for a
2-core CPU (tests, CI). ``standard`` is the benchmark budget: sized so that one 2D 28 px cell (experts, distillation
and its evaluation) takes at most 20 min and one 3D 28³ cell at most 60 min on 2 cores at one thread per process.
Every table and ``metrics.json`` names the preset that produced it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_DIR", "PRESETS", "Preset", "config_path", "deep_merge", "get_preset", "method_settings", "size_rule"]


@dataclass(frozen=True)
class Preset:
    """Hyper-parameters shared by distillers, coresets and the evaluation protocol.

    Attributes:
        name: preset name recorded in outputs.
        eval_models: K, the number of fresh networks trained per evaluation.
        eval_epochs: epochs of each evaluation network on a synthetic set or real subset.
        eval_epochs_full: epochs on the whole real train split (the upper bound row); MedMNIST's own
            baselines train 100 epochs, 1000 epochs on the full split would only cost time.
        width: network width (channels of ConvNet, base channels of ResNetAP-10, ...).
        depth: ConvNet depth.
        eval_lr: learning rate when the set has no learned lr.
        eval_batch: batch size of evaluation training.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        dsa: train evaluation networks with DSA (the protocol of DSA/MTT/PTM).
        dsa_strategy: the DSA op groups.
        embed_epochs: epochs of the network whose embedding herding uses.
        forgetting_epochs: epochs over which forgetting events are counted.
        norm: normalisation of ConvNet-style networks.
    """

    name: str
    eval_models: int
    eval_epochs: int
    eval_epochs_full: int
    width: int
    depth: int = 3
    eval_lr: float = 0.01
    eval_batch: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dsa: bool = True
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    embed_epochs: int = 20
    forgetting_epochs: int = 20
    norm: str = "instance"

    def replace(self, **overrides: Any) -> Preset:
        """A copy with ``overrides`` applied; unknown keys raise a ``KeyError`` naming the valid ones."""
        if not overrides:
            return self
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise KeyError(f"unknown preset keys {unknown}; valid keys: {', '.join(sorted(valid))}.")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_PAPER = Preset(
    "paper", eval_models=10, eval_epochs=1000, eval_epochs_full=100, width=128, embed_epochs=50, forgetting_epochs=50
)
# 3D ConvNets cost about 30x more per image than 2D ones at 28 px, so ``quick`` is sized per spatial dims.
PRESETS: dict[tuple[str, int], Preset] = {
    ("paper", 2): _PAPER,
    ("paper", 3): _PAPER,
    ("quick", 2): Preset(
        "quick", eval_models=3, eval_epochs=300, eval_epochs_full=20, width=32, embed_epochs=10, forgetting_epochs=10
    ),
    ("quick", 3): Preset(
        "quick", eval_models=3, eval_epochs=100, eval_epochs_full=12, width=16, eval_batch=64, embed_epochs=3,
        forgetting_epochs=3,
    ),
    # The full-data bound (``eval_epochs_full``) is tested at the epoch chosen on the val split. Batch 64, not 256,
    # chosen on val (benchmarks/results/eval_batch.md, mean val balanced accuracy of the networks' chosen epochs):
    # BreastMNIST 88.0 % against 84.6 % with 256 (546 images: 3 SGD steps per epoch), PneumoniaMNIST 97.4 against
    # 96.4. Sets of <= 64 images (ipc <= 32 on two classes) train in one batch either way.
    ("standard", 2): Preset(
        "standard", eval_models=5, eval_epochs=500, eval_epochs_full=60, width=32, eval_batch=64, embed_epochs=20,
        forgetting_epochs=20,
    ),
    ("standard", 3): Preset(
        "standard", eval_models=5, eval_epochs=200, eval_epochs_full=30, width=16, eval_batch=64, embed_epochs=5,
        forgetting_epochs=5,
    ),
}


def get_preset(name: str, spatial_dims: int = 2, **overrides: Any) -> Preset:
    """The preset ``name`` for 2D or 3D data, with ``overrides`` applied.

    Raises:
        KeyError: unknown preset name (the message lists the valid ones) or unknown override key.
    """
    key = (str(name).lower(), int(spatial_dims))
    if key not in PRESETS:
        names = sorted({n for n, _ in PRESETS})
        raise KeyError(f"unknown preset '{name}'; valid presets: {', '.join(names)}.")
    return PRESETS[key].replace(**{k: v for k, v in overrides.items() if v is not None})


# ---------------------------------------------------------------------------------------------------------------------
# Method settings per dataset × method × ipc (``configs/<dataset>.json``), for the trajectory methods.
# ---------------------------------------------------------------------------------------------------------------------
CONFIG_DIR = Path(os.environ.get("MONAI_DISTILL_CONFIGS", Path(__file__).resolve().parents[1] / "configs"))


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``; nested mappings are merged key by key instead of replaced."""
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def size_rule(n_train: int, spatial_dims: int = 2) -> dict[str, Any]:
    """Settings tied to the size of the train split (DESIGN, lessons from the reference MTT on BreastMNIST).

    Small medical sets make expert epochs short, and a student that takes more steps than the expert overshoots
    (normalised loss 15-85, then NaN). So: the expert batch is the power of two nearest below ``n/8`` (between 32
    and 256), giving at least ~8 SGD steps per epoch; methods match ``expert_epochs = 2`` and the student takes at
    most as many steps as the expert takes in those epochs, capped for cost (``syn_steps`` ≤ 20 in 2D, 10 in 3D).
    PTM's student takes ``syn_steps`` steps at its last end step, fewer before.

    Returns:
        ``{"buffers": {"batch": b}, "syn_steps": s, "expert_epochs": 2}``.
    """
    batch = 2 ** math.floor(math.log2(max(1, n_train) / 8)) if n_train >= 256 else 32
    batch = int(min(256, max(32, batch)))
    teacher_steps = math.ceil(n_train / batch)
    syn_steps = int(min(2 * teacher_steps, 20 if spatial_dims == 2 else 10))
    return {"buffers": {"batch": batch}, "syn_steps": syn_steps, "expert_epochs": 2}


def _resolve_auto(values: Any, rule: Mapping[str, Any]) -> Any:
    """Replace every ``"auto"`` in a config by the :func:`size_rule` value of the same key."""
    if isinstance(values, Mapping):
        return {k: (rule.get(k) if v == "auto" else _resolve_auto(v, rule.get(k, {}) if isinstance(rule.get(k),
                Mapping) else {})) for k, v in values.items()}
    return values


def config_path(dataset: str) -> Path:
    """``configs/<flag>.json`` for a MedMNIST flag, else ``configs/default.json``."""
    path = CONFIG_DIR / f"{Path(str(dataset)).stem.lower()}.json"
    return path if path.is_file() else CONFIG_DIR / "default.json"


def method_settings(
    dataset: str, method: str, ipc: int, preset: str = "quick", n_train: int | None = None, spatial_dims: int = 2,
    shared: bool = True,
) -> dict[str, Any]:
    """The settings of ``method`` at ``ipc`` for ``dataset`` under ``preset``, from ``configs/``.

    A config file holds, per preset, ``common`` (every method listed), ``buffers`` (expert training) and
    ``methods.<name>.{all, ipc<k>}``; they are merged in that order (later wins), with the buffers under the key
    ``buffers``. Values ``"auto"`` follow :func:`size_rule` for ``n_train``. Methods a file does not list get ``{}``
    (their own defaults); a bundle's ``method_options`` are merged on top by the workflow.

    ``shared=False`` skips ``common`` and ``buffers``: they hold the trajectory methods' keys (iterations, syn_steps,
    expert training), which a method without expert buffers does not take (a DM entry written by ``tune`` would
    otherwise make DM fail on ``syn_steps``).
    """
    path = config_path(dataset)
    if not path.is_file():
        return {}
    cfg = json.loads(path.read_text())
    section = cfg.get("presets", {}).get(str(preset).lower())
    if section is None or method not in section.get("methods", {}):
        return {}
    entry = section["methods"][method]
    merged = deep_merge(section.get("common", {}) if shared else {}, entry.get("all", {}))
    merged = deep_merge(merged, entry.get(f"ipc{int(ipc)}", {}))
    if shared:
        merged["buffers"] = deep_merge(section.get("buffers", {}), merged.get("buffers", {}))
    if n_train is not None:
        merged = _resolve_auto(merged, size_rule(n_train, spatial_dims))
    return merged
