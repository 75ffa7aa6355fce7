"""Tiny settings shared by the trajectory-matching tests (width 8, 2 experts of 3 epochs, a few iterations)."""

from __future__ import annotations

import dataclasses

import torch

from monai_distill.methods import DistillConfig, get_method
from monai_distill.presets import deep_merge, get_preset

CPU = torch.device("cpu")
# One flat buffer serves every method in the tests (built once per buffer_dir, then reused from disk).
TINY = {
    "num_iterations": 6,
    "syn_steps": 3,
    "expert_epochs": 1,
    "min_start_epoch": 0,
    "max_start_epoch": 1,
    "lr_img": 100.0,
    "buffers": {"num_experts": 2, "epochs": 3, "batch": 128, "flat": True},
}
PER_METHOD = {
    "ptm": {"max_end_epoch": 3, "retrain_points": 2},
    "datm": {"label_epoch": 2},
    "ftd": {"ema_decay": 0.5},
}


def options(method: str, buffer_dir, **overrides) -> dict:
    opts = deep_merge(TINY, PER_METHOD.get(method, {}))
    return deep_merge({**opts, "buffer_dir": str(buffer_dir)}, overrides)


def distiller(method: str, real, buffer_dir, ipc: int = 2, seed: int = 0, init: bool = True, **overrides):
    cfg = DistillConfig(ipc=ipc, arch="convnet", preset=get_preset("quick", real.spatial_dims, width=8), seed=seed,
                        options=options(method, buffer_dir, **overrides))
    d = get_method(method)(real, cfg, CPU)
    if init:
        d.init_synthetic()
    return d


def real_subset(real, per_class: int):
    """The first ``per_class`` real images of every class (3D experts on all 1188 volumes cost minutes on CPU)."""
    idx = torch.cat([real.indices_of_class(c)[:per_class] for c in range(real.num_classes)])
    return dataclasses.replace(real, images=real.images[idx].clone(), labels=real.labels[idx].clone())
