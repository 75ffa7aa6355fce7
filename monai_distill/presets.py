"""Named hyper-parameter presets for distillation and the evaluation protocol.

``paper`` follows the seeds (PTM, HoP-TM, Histo-DD) and the MTT line of work: K = 10 evaluation networks,
1000 epochs on the synthetic set, ConvNet width 128, depth 3, SGD (momentum 0.9, weight decay 5e-4), lr 0.01
(or the learned lr), lr x0.1 at half, DSA on. ``quick`` keeps every step of that protocol but is sized for a
2-core CPU; every table and ``metrics.json`` names the preset that produced it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["PRESETS", "Preset", "get_preset"]


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
        "quick", eval_models=3, eval_epochs=100, eval_epochs_full=5, width=16, eval_batch=64, embed_epochs=3,
        forgetting_epochs=3,
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
