"""The distillation bundles with the trajectory methods (mtt, ftd, datm, ptm, hoptm) on real MedMNIST data.

2D runs use BreastMNIST; 3D runs use real AdrenalMNIST3D volumes, with the train split cut to 40 volumes per class
(written as a user ``.npz`` with the MedMNIST keys) because 3D experts on all 1188 volumes take minutes on CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from monai.bundle import run

from monai_distill.data import SyntheticSet
from monai_distill.presets import deep_merge
from monai_distill.workflows import INTERRUPT_ENV

from .helpers import FAST, REPO_ROOT, run_bundle

TRAIN_2D = "bundles/medmnist2d_distillation/configs/train.json"
TRAIN_3D = "bundles/organmnist3d_distillation/configs/train.json"
BUFFERS_2D = "bundles/medmnist2d_distillation/configs/buffers.json"
MULTI_2D = "bundles/medmnist2d_distillation/configs/multi_gpu_train.json"
METHODS = ["mtt", "ftd", "datm", "ptm", "hoptm"]
# One flat buffer (2 experts x 3 epochs) serves every method; a few iterations of a width-8 ConvNet.
TINY = {"num_iterations": 8, "syn_steps": 4, "expert_epochs": 1, "max_start_epoch": 1, "max_end_epoch": 3,
        "label_epoch": 2, "buffers": {"num_experts": 2, "epochs": 3, "batch": 128, "flat": True}}
KEYS = {"ptm": ["max_end_epoch"], "datm": ["label_epoch"]}


def tiny(method: str, **extra) -> dict:
    drop = {k for m, keys in KEYS.items() if m != method for k in keys}
    return deep_merge({k: v for k, v in TINY.items() if k not in drop}, extra)


@pytest.fixture(scope="module")
def buffer_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bundle_buffers")


@pytest.fixture(scope="module")
def adrenal_small(medmnist_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("adrenal") / "adrenalmnist3d_small.npz"
    with np.load(medmnist_dir / "adrenalmnist3d.npz") as src:
        arrays = {k: src[k] for k in src.files}
    y = arrays["train_labels"][:, 0]
    idx = np.concatenate([np.flatnonzero(y == c)[:40] for c in (0, 1)])
    arrays["train_images"], arrays["train_labels"] = arrays["train_images"][idx], arrays["train_labels"][idx]
    np.savez(path, **arrays)
    return path


def _run_in_process(config, out, **overrides):
    run(config_file=str(REPO_ROOT / config), output_dir=str(out), **{**FAST, "preset_overrides": {"width": 8},
                                                                     **overrides})
    return json.loads((out / "metrics.json").read_text())


def _check(out, metrics, method, shape):
    assert metrics["method"] == method and metrics["ipc"] == 2 and metrics["iterations"] == 8
    assert 0.0 <= metrics["test_acc_mean"] <= 1.0 and metrics["learned_lr"] > 0
    syn = SyntheticSet.load(out / "synthetic.pt")
    assert syn.images.shape == (4, *shape) and torch.isfinite(syn.images).all()
    for name in ("synthetic.png", "loss_curve.png", "checkpoint.pt", "losses.csv"):
        assert (out / name).is_file(), name


@pytest.mark.parametrize("method", METHODS)
def test_contract_2d(method, medmnist_dir, buffer_dir, tmp_path):
    out = tmp_path / method
    metrics = _run_in_process(TRAIN_2D, out, dataset="breastmnist", dataset_dir=str(medmnist_dir), method=method,
                              ipc=2, buffer_dir=str(buffer_dir), method_options=tiny(method))
    _check(out, metrics, method, (1, 28, 28))
    assert metrics["dataset"] == "breastmnist"


@pytest.mark.parametrize("method", METHODS)
def test_contract_3d(method, adrenal_small, buffer_dir, tmp_path):
    out = tmp_path / method
    metrics = _run_in_process(TRAIN_3D, out, dataset=str(adrenal_small), method=method, ipc=2,
                              buffer_dir=str(buffer_dir), method_options=tiny(method, buffers={"batch": 32}))
    _check(out, metrics, method, (1, 28, 28, 28))


@pytest.mark.parametrize("dims", [2, 3])
def test_ptm_beats_random_real_images_at_ipc2(dims, medmnist_dir, adrenal_small, buffer_dir, tmp_path):
    """The command line contract, same seed and evaluation for both: PTM (20 iterations) vs its own initialisation."""
    config, data = (TRAIN_2D, "breastmnist") if dims == 2 else (TRAIN_3D, str(adrenal_small))
    opts = tiny("ptm", num_iterations=20, syn_steps=6, buffers={"batch": 128 if dims == 2 else 32})
    acc = {}
    for method in ("random", "ptm"):
        out = tmp_path / method
        run_bundle(config, dataset=data, dataset_dir=medmnist_dir, method=method, ipc=2, seed=0, output_dir=out,
                   buffer_dir=buffer_dir, **{**FAST, "eval_models": 2, "eval_epochs": 100,
                                             "preset_overrides": "{'width': 8}"},
                   method_options=json.dumps(opts).replace("true", "True"))
        acc[method] = json.loads((out / "metrics.json").read_text())["test_acc_mean"]
    assert acc["ptm"] > acc["random"], acc


def test_resume_on_the_command_line(medmnist_dir, buffer_dir, tmp_path):
    common = {"dataset": "breastmnist", "dataset_dir": medmnist_dir, "method": "ptm", "ipc": 2, "evaluate": False,
              "buffer_dir": buffer_dir, "checkpoint_every": 3, "progress": False, "preset_overrides": "{'width': 8}",
              "method_options": json.dumps(tiny("ptm")).replace("true", "True")}
    run_bundle(TRAIN_2D, output_dir=tmp_path / "whole", **common)
    os.environ[INTERRUPT_ENV] = "4"
    try:
        proc = run_bundle(TRAIN_2D, check=False, output_dir=tmp_path / "cut", **common)
    finally:
        del os.environ[INTERRUPT_ENV]
    assert proc.returncode != 0 and "interrupted after iteration 4" in proc.stderr
    run_bundle(TRAIN_2D, output_dir=tmp_path / "cut", resume="true", **common)
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["resumed_from"] == 3
    a, b = (SyntheticSet.load(tmp_path / d / "synthetic.pt") for d in ("whole", "cut"))
    assert torch.equal(a.images, b.images) and a.lr == b.lr


def test_buffers_bundle_splits_experts_across_ranks(medmnist_dir, tmp_path):
    """buffers.json under torchrun (2 CPU ranks, gloo): rank r trains experts r, r + 2, ...; all exist at the end."""
    opts = json.dumps(tiny("mtt", buffers={"num_experts": 2, "epochs": 2, "batch": 128, "flat": False}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
           "-m", "monai.bundle", "run", "--config_file", f"['{TRAIN_2D}','{MULTI_2D}','{BUFFERS_2D}']",
           "--dataset", "breastmnist", "--dataset_dir", str(medmnist_dir), "--method", "mtt", "--ipc", "2",
           "--output_dir", str(tmp_path / "out"), "--buffer_dir", str(tmp_path / "buf"), "--progress", "False",
           "--preset_overrides", "{'width': 8}", "--method_options", opts.replace("false", "False")]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = json.loads((tmp_path / "out" / "buffers.json").read_text())
    assert info["trained_now"] == [0] and info["num_experts"] == 2  # rank 0's share; rank 1 trained expert 1
    experts = sorted(p.name for p in (tmp_path / "buf").glob("*/expert_*.pt"))
    assert experts == ["expert_0000.pt", "expert_0001.pt"]
