"""Bad inputs to the distillation bundles (issue 13, part A): every one ends with exit code != 0, a last line that
names the culprit, and nothing in the output directory that looks like a finished run's result.

Each case is a bundle run with one thing wrong (an option, a data file, a saved artefact, the output directory or
the launch). About ten run exactly as users do (``python -m monai.bundle run ...`` in a subprocess, last stderr
line checked); the others call ``monai.bundle.run(config_file=..., **overrides)`` in-process, the same code path
minus the argument parsing, where the exit is a ``SystemExit`` carrying the same last line.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from monai_distill.data import SyntheticSet
from monai_distill.runs import LOCK_NAME, OutputDirLock, RunError, run_status

from .bundles.helpers import REPO_ROOT, bundle_cmd

CONFIGS = REPO_ROOT / "bundles"
TRAIN_2D = str(CONFIGS / "medmnist2d_distillation/configs/train.json")
EVAL_2D = str(CONFIGS / "medmnist2d_distillation/configs/evaluate.json")
BUFFERS_2D = str(CONFIGS / "medmnist2d_distillation/configs/buffers.json")
TRAIN_3D = str(CONFIGS / "organmnist3d_distillation/configs/train.json")
EVAL_3D = str(CONFIGS / "organmnist3d_distillation/configs/evaluate.json")
TRAIN_HISTO = str(CONFIGS / "histodd_patches/configs/train.json")
EVAL_HISTO = str(CONFIGS / "histodd_patches/configs/evaluate.json")
# The smallest run that still does everything (distil, save, evaluate): it only matters for the cases that succeed.
TINY = {"eval_models": 1, "eval_epochs": 1, "preset_overrides": {"width": 8}, "progress": False, "device": "cpu"}
FINAL = ("synthetic.pt", "metrics.json")
PREFIX = "monai-distill: error: "

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------------------------------
# bad files, made from real MedMNIST arrays
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def breast(medmnist_dir: Path) -> dict[str, np.ndarray]:
    with np.load(medmnist_dir / "breastmnist.npz") as f:
        return {k: f[k] for k in f.files}


@dataclass
class Ctx:
    """What a case builds its overrides from: a fresh tmp dir, the real data, and makers of bad files."""

    tmp: Path
    medmnist: Path
    volumes: Path
    breast: dict[str, np.ndarray]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def train2d(self, **overrides: Any) -> dict[str, Any]:
        """A valid 2D train run (random coreset) with ``overrides``."""
        return {"dataset": "breastmnist", "dataset_dir": str(self.medmnist), "method": "random", "ipc": 2,
                "output_dir": str(self.out), **TINY, **overrides}

    def npz(self, name: str = "user.npz", **changes: np.ndarray) -> str:
        """The BreastMNIST arrays as a user ``.npz``, with some arrays replaced (``None`` drops a key)."""
        arrays = {**self.breast, **changes}
        path = self.tmp / name
        np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
        return str(path)

    def labels(self, split: str, index: int, value: int, dtype: Any = None) -> np.ndarray:
        arr = self.breast[f"{split}_labels"].astype(dtype or self.breast[f"{split}_labels"].dtype)
        arr[index] = value
        return arr

    def synthetic(self, name: str, classes: int = 2, shape: tuple[int, ...] = (1, 28, 28), nan: bool = False,
                  truncate: bool = False) -> str:
        """A saved set of ``classes`` x 2 images (or a corrupt one), as ``SyntheticSet.save`` writes it."""
        images = torch.randn(classes * 2, *shape)
        labels = torch.arange(classes).repeat_interleave(2)
        meta = {"method": "random", "dataset": "breastmnist", "num_classes": classes, "arch": "convnet"}
        path = self.tmp / name
        SyntheticSet(images, labels, meta=meta).save(path)
        if nan:  # what a diverged run wrote before SyntheticSet checked its values: saved as a plain state dict
            state = torch.load(path, weights_only=True)
            state["images"][0, 0, 0, 0] = float("nan")
            torch.save(state, path)
        if truncate:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        return str(path)

    def volume_csv(self, rows: list[tuple[str, int, str]], nan_volume: bool = False) -> str:
        """A volume CSV of real CT/MR files; ``nan_volume`` adds a copy of a CT with one NaN voxel as a train row."""
        lines = ["path,label,split"] + [f"{self.volumes / f},{y},{s}" for f, y, s in rows]
        if nan_volume:
            import nibabel as nib

            src = nib.load(self.volumes / "totalseg_example_mr_sm.nii.gz")
            data = np.asarray(src.dataobj, dtype=np.float32)
            data[5, 5, 5] = np.nan
            bad = self.tmp / "mr_with_nan.nii.gz"
            nib.save(nib.Nifti1Image(data, src.affine), bad)
            lines.append(f"{bad},1,train")
        path = self.tmp / "volumes.csv"
        path.write_text("\n".join(lines) + "\n")
        return str(path)


CT, MR, MR2 = "totalseg_example_ct_sm.nii.gz", "anatomical.nii", "totalseg_example_mr_sm.nii.gz"


def _he_like(c: Ctx) -> str:
    """Small RGB patches (BreastMNIST repeated to 3 channels): enough for the checks before Histo-DD's work."""
    rgb = {k: (np.repeat(v[:120, ..., None], 3, axis=-1) if k.endswith("images") else v[:120])
           for k, v in c.breast.items()}
    return c.npz("rgb.npz", **rgb)


def _nan_npz(c: Ctx) -> str:
    images = c.breast["train_images"].astype(np.float32) / 255
    images[7, 3, 3] = np.nan
    return c.npz(train_images=images)


def _truncated_npz(c: Ctx) -> str:
    path = Path(c.npz())
    path.write_bytes(path.read_bytes()[:5000])
    return str(path)


def _trunc_checkpoint(c: Ctx) -> dict[str, Any]:
    c.out.mkdir(parents=True)
    torch.save({"format_version": 1, "distiller": {"x": torch.zeros(1000)}}, c.out / "checkpoint.pt")
    data = (c.out / "checkpoint.pt").read_bytes()
    (c.out / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    return c.train2d(resume=True)


def _foreign_checkpoint(c: Ctx) -> dict[str, Any]:
    c.out.mkdir(parents=True)
    torch.save({"weights": torch.zeros(3)}, c.out / "checkpoint.pt")
    return c.train2d(resume=True)


def _three_class_npz(c: Ctx) -> str:
    three = {k: v.copy() for k, v in c.breast.items()}
    for split in ("train", "val", "test"):
        three[f"{split}_labels"][:6] = 2
    return c.npz("three.npz", **three)


# ---------------------------------------------------------------------------------------------------------------------
# the matrix
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One bad input.

    Attributes:
        config: the bundle config(s).
        make: builds the overrides (and any bad files) in a :class:`Ctx`.
        culprit: strings the last line must contain (the option or file, and what was found).
        left: what the output dir holds afterwards: ``nothing`` (refused before the run started: not even created)
            or ``failed`` (``status.json`` says failed, ``error.log`` has the traceback, no final artefact).
        cli: run as a subprocess ``python -m monai.bundle run``.
    """

    config: str | list[str]
    make: Callable[[Ctx], dict[str, Any]]
    culprit: tuple[str, ...]
    left: str = "nothing"
    cli: bool = False


CASES: dict[str, Case] = {
    # ------------------------------------------------------------------ options (issue 13 examples first)
    "ipc-1.7-is-not-truncated": Case(TRAIN_2D, lambda c: c.train2d(ipc=1.7), ("--ipc", "1.7"), cli=True),
    "seed-abc-names-seed": Case(TRAIN_2D, lambda c: c.train2d(seed="abc"), ("--seed", "'abc'"), cli=True),
    "eval_models-0": Case(TRAIN_2D, lambda c: c.train2d(eval_models=0), ("--eval_models must be >= 1",), cli=True),
    "eval_epochs-0": Case(TRAIN_2D, lambda c: c.train2d(eval_epochs=0), ("--eval_epochs must be >= 1",)),
    "ipc-0": Case(TRAIN_2D, lambda c: c.train2d(ipc=0), ("--ipc must be >= 1", "0")),
    "ipc-text": Case(TRAIN_2D, lambda c: c.train2d(ipc="ten"), ("--ipc", "'ten'")),
    "ipc-larger-than-a-class": Case(TRAIN_2D, lambda c: c.train2d(ipc=500), ("largest valid ipc is 147",),
                                    left="failed"),
    "seed-negative": Case(TRAIN_2D, lambda c: c.train2d(seed=-1), ("--seed must be >= 0",)),
    "num_threads-text": Case(TRAIN_2D, lambda c: c.train2d(num_threads="abc"), ("num_threads", "'abc'")),
    "num_threads-fraction": Case(TRAIN_2D, lambda c: c.train2d(num_threads=1.5), ("num_threads", "1.5")),
    "method-unknown": Case(TRAIN_2D, lambda c: c.train2d(method="kmeans"), ("unknown method 'kmeans'",)),
    "arch-unknown": Case(TRAIN_2D, lambda c: c.train2d(arch="unet"), ("unknown network 'unet'",)),
    "eval_arch-unknown": Case(TRAIN_2D, lambda c: c.train2d(eval_arch="resnet99"), ("unknown network 'resnet99'",)),
    "preset-unknown": Case(TRAIN_2D, lambda c: c.train2d(preset="slow"), ("unknown preset 'slow'",)),
    "preset_overrides-unknown-key": Case(TRAIN_2D, lambda c: c.train2d(preset_overrides={"widht": 8}),
                                         ("--preset_overrides", "widht")),
    "preset_overrides-bad-value": Case(TRAIN_2D, lambda c: c.train2d(preset_overrides={"width": 0}),
                                       ("--preset_overrides 'width' must be >= 1",)),
    "progress-not-a-boolean": Case(TRAIN_2D, lambda c: c.train2d(progress="maybe"), ("--progress", "'maybe'")),
    "resume-not-a-boolean": Case(TRAIN_2D, lambda c: c.train2d(resume="perhaps"), ("--resume", "'perhaps'")),
    "checkpoint_every-negative": Case(TRAIN_2D, lambda c: c.train2d(checkpoint_every=-1),
                                      ("--checkpoint_every must be >= 0",)),
    "size-medmnist-does-not-ship": Case(TRAIN_2D, lambda c: c.train2d(size=30), ("--size", "30")),
    "dataset-unknown-flag": Case(TRAIN_2D, lambda c: c.train2d(dataset="notaflag"),
                                 ("--dataset", "unknown MedMNIST flag 'notaflag'")),
    "dataset-missing-npz": Case(TRAIN_2D, lambda c: c.train2d(dataset=str(c.tmp / "missing.npz")),
                                ("--dataset", "missing.npz", "does not exist")),
    "dataset-unknown-suffix": Case(TRAIN_2D, lambda c: c.train2d(dataset=str(c.tmp / "data.txt")),
                                   ("--dataset", "data.txt")),
    "dataset_dir-without-the-file": Case(TRAIN_2D, lambda c: c.train2d(dataset_dir=str(c.tmp / "nowhere")),
                                         ("breastmnist.npz", "nowhere")),
    "device-unknown": Case(TRAIN_2D, lambda c: c.train2d(device="gpu"), ("--device", "gpu")),
    "method_options-not-a-dict": Case(TRAIN_2D, lambda c: c.train2d(method_options="[1, 2]"),
                                      ("--method_options", "[1, 2]")),
    "method_options-unknown-key": Case(TRAIN_2D, lambda c: c.train2d(method="dm", method_options={"bogus": 1}),
                                       ("unknown dm option", "bogus"), left="failed"),
    "method_options-fraction": Case(TRAIN_2D, lambda c: c.train2d(method="dm", method_options={"iterations": 1.5}),
                                    ("method option 'iterations'", "1.5"), left="failed"),
    "torchrun-without-multi_gpu_train": Case(TRAIN_2D, lambda c: (c.env.update(WORLD_SIZE="2"), c.train2d())[1],
                                             ("WORLD_SIZE=2", "multi_gpu_train.json"), cli=True),
    "buffers-for-a-coreset": Case([TRAIN_2D, BUFFERS_2D], lambda c: c.train2d(),
                                  ("--method 'random' does not use expert buffers",)),
    # ------------------------------------------------------------------ data files
    "npz-test-label-typo-7": Case(
        TRAIN_2D, lambda c: c.train2d(dataset=c.npz(test_labels=c.labels("test", 4, 7))),
        ("test labels (test_labels) contain [7]", "the train split has 2 classes"), left="failed", cli=True),
    "npz-uint8-label-255": Case(
        TRAIN_2D, lambda c: c.train2d(dataset=c.npz(train_labels=c.labels("train", 9, 255, np.uint8))),
        ("train labels", "255"), left="failed"),
    "npz-fractional-val-label": Case(
        TRAIN_2D, lambda c: c.train2d(dataset=c.npz(val_labels=c.breast["val_labels"] * 0.5)),
        ("val labels (val_labels) must be whole numbers", "0.5"), left="failed"),
    "npz-nan-pixel": Case(TRAIN_2D, lambda c: c.train2d(dataset=_nan_npz(c)), ("train_images", "NaN"),
                          left="failed"),
    "npz-inf-test-pixel": Case(
        TRAIN_2D, lambda c: c.train2d(dataset=c.npz(test_images=np.full((156, 28, 28), np.inf, np.float32))),
        ("test_images", "NaN or infinite"), left="failed"),
    "npz-all-zero-images": Case(
        TRAIN_2D, lambda c: c.train2d(dataset=c.npz(train_images=np.zeros_like(c.breast["train_images"]))),
        ("user.npz", "train split", "constant"), left="failed"),
    "npz-train-test-size-mismatch": Case(
        TRAIN_2D, lambda c: c.train2d(dataset=c.npz(test_images=np.pad(c.breast["test_images"], ((0,), (2,), (2,))))),
        ("test split", "(1, 32, 32)", "(1, 28, 28)"), left="failed"),
    "npz-missing-test-key": Case(TRAIN_2D, lambda c: c.train2d(dataset=c.npz(test_images=None)),
                                 ("lacks the keys", "test_images"), left="failed"),
    "npz-truncated-file": Case(TRAIN_2D, lambda c: c.train2d(dataset=_truncated_npz(c)),
                               ("user.npz", "not a readable .npz"), left="failed"),
    "csv-nan-voxel": Case(
        TRAIN_3D, lambda c: c.train2d(dataset=c.volume_csv([(CT, 0, "train"), (MR, 1, "train"), (CT, 0, "test")],
                                                           nan_volume=True), size=16),
        ("mr_with_nan.nii.gz", "NaN"), left="failed", cli=True),
    "csv-test-label-typo-7": Case(
        TRAIN_3D, lambda c: c.train2d(dataset=c.volume_csv([(CT, 0, "train"), (MR, 1, "train"), (MR2, 7, "test")]),
                                      size=16),
        ("test labels contain [7]", "row 3: test label 7"), left="failed"),
    "csv-missing-volume": Case(
        TRAIN_3D, lambda c: c.train2d(dataset=c.volume_csv([(CT, 0, "train"), ("gone.nii.gz", 1, "train"),
                                                            (MR, 1, "test")]), size=16),
        ("volumes.csv", "gone.nii.gz", "do not exist"), left="failed"),
    "3d-size-not-on-disk": Case(TRAIN_3D, lambda c: c.train2d(dataset="adrenalmnist3d", size=128),
                                ("adrenalmnist3d_128.npz", "not found")),
    # ------------------------------------------------------------------ saved artefacts
    "evaluate-missing-synthetic": Case(
        EVAL_2D, lambda c: {**TINY, "synthetic": str(c.tmp / "nope.pt"), "output_dir": str(c.out)},
        ("--synthetic", "nope.pt")),
    "evaluate-nan-synthetic": Case(
        EVAL_2D, lambda c: {**TINY, "synthetic": c.synthetic("nan.pt", nan=True), "dataset": "breastmnist",
                            "dataset_dir": str(c.medmnist), "output_dir": str(c.out)},
        ("nan.pt", "NaN"), left="failed", cli=True),
    "evaluate-truncated-synthetic": Case(
        EVAL_2D, lambda c: {**TINY, "synthetic": c.synthetic("cut.pt", truncate=True), "dataset": "breastmnist",
                            "dataset_dir": str(c.medmnist), "output_dir": str(c.out)},
        ("cut.pt", "not a readable SyntheticSet"), left="failed"),
    "evaluate-3-class-set-on-2-class-data": Case(
        EVAL_2D, lambda c: {**TINY, "synthetic": c.synthetic("three.pt", classes=3), "dataset": "breastmnist",
                            "dataset_dir": str(c.medmnist), "output_dir": str(c.out)},
        ("three.pt", "3 classes", "breastmnist.npz", "has 2"), left="failed", cli=True),
    "evaluate-2-class-set-on-3-class-data": Case(
        EVAL_2D, lambda c: {**TINY, "synthetic": c.synthetic("two.pt"), "dataset": _three_class_npz(c),
                            "output_dir": str(c.out)},
        ("two.pt", "2 classes", "three.npz", "has 3"), left="failed"),
    "evaluate-image-size-mismatch": Case(
        EVAL_2D, lambda c: {**TINY, "synthetic": c.synthetic("big.pt", shape=(1, 32, 32)), "dataset": "breastmnist",
                            "dataset_dir": str(c.medmnist), "output_dir": str(c.out)},
        ("big.pt", "(1, 32, 32)", "(1, 28, 28)"), left="failed"),
    "evaluate-2d-set-on-3d-data": Case(
        EVAL_3D, lambda c: {**TINY, "synthetic": c.synthetic("flat.pt"), "dataset": "adrenalmnist3d",
                            "dataset_dir": str(c.medmnist), "output_dir": str(c.out)},
        ("flat.pt", "(1, 28, 28)", "(1, 28, 28, 28)"), left="failed"),
    "evaluate-full-without-dataset": Case(EVAL_2D, lambda c: {**TINY, "synthetic": "full", "output_dir": str(c.out)},
                                          ("--synthetic full", "--dataset")),
    "resume-truncated-checkpoint": Case(TRAIN_2D, _trunc_checkpoint, ("--resume", "checkpoint.pt", "truncated"),
                                        left="failed", cli=True),
    "resume-foreign-checkpoint": Case(TRAIN_2D, _foreign_checkpoint, ("checkpoint.pt", "not a checkpoint"),
                                      left="failed"),
    # ------------------------------------------------------------------ histodd_patches
    "histodd-missing-dataset": Case(TRAIN_HISTO, lambda c: {**TINY, "dataset": str(c.tmp / "he.npz"),
                                                            "output_dir": str(c.out)}, ("--dataset", "he.npz")),
    "histodd-ipc-fraction": Case(TRAIN_HISTO, lambda c: {**TINY, "dataset": _he_like(c), "ipc": 2.5,
                                                         "output_dir": str(c.out)}, ("--ipc", "2.5")),
    "histodd-stain-not-a-boolean": Case(
        TRAIN_HISTO, lambda c: {**TINY, "dataset": _he_like(c), "ipc": 2, "stain": "maybe", "output_dir": str(c.out),
                                "cache_dir": str(c.tmp / "cache")},
        ("method option 'stain'", "'maybe'"), left="failed"),
    "histodd-grey-patches-with-stain": Case(
        TRAIN_HISTO, lambda c: {**TINY, "dataset": c.npz(), "ipc": 2, "output_dir": str(c.out),
                                "cache_dir": str(c.tmp / "cache")},
        ("stain normalisation needs RGB", "stain=false"), left="failed", cli=True),
    "histodd-evaluate-3-class-set": Case(
        EVAL_HISTO, lambda c: {**TINY, "synthetic": c.synthetic("three.pt", classes=3, shape=(3, 28, 28)),
                               "dataset": _he_like(c), "arch": "convnet", "output_dir": str(c.out)},
        ("three.pt", "3 classes", "has 2"), left="failed"),
}


def _check_left(case: Case, out: Path) -> None:
    if case.left == "nothing":  # refused before the run started: the output directory was not even created
        assert not out.exists(), sorted(p.name for p in out.iterdir())
    else:
        status = json.loads((out / "status.json").read_text())
        assert status["status"] == "failed" and status["error"] and status["pid"] and status["ended"], status
        assert "Traceback" in (out / "error.log").read_text()
    for name in FINAL:
        assert not (out / name).exists(), f"{name} left in {out}"
    assert not (out / LOCK_NAME).exists()


def _ctx(tmp_path: Path, medmnist_dir: Path, shared_data: Path, breast: dict) -> Ctx:
    return Ctx(tmp=tmp_path, medmnist=medmnist_dir, volumes=shared_data / "volumes", breast=breast)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name: str, tmp_path: Path, medmnist_dir: Path, shared_data: Path, breast: dict,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[name]
    ctx = _ctx(tmp_path, medmnist_dir, shared_data, breast)
    overrides = case.make(ctx)
    out = Path(overrides["output_dir"])
    if case.cli:
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **ctx.env}
        cli = {k: (json.dumps(v).replace("true", "True").replace("false", "False") if isinstance(v, dict) else v)
               for k, v in overrides.items()}
        proc = subprocess.run(bundle_cmd(case.config, **cli), cwd=REPO_ROOT, capture_output=True, text=True, env=env,
                              timeout=300)
        assert proc.returncode != 0, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
    else:
        from monai.bundle import run

        for key, value in ctx.env.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(SystemExit) as exc:
            run(config_file=case.config, **overrides)
        last = str(exc.value.code)
    assert last.startswith(PREFIX), last
    for text in case.culprit:
        assert text in last, f"{text!r} not in the last line: {last}"
    _check_left(case, out)


def test_matrix_size() -> None:
    assert len(CASES) >= 35 and sum(c.cli for c in CASES.values()) >= 8


# ---------------------------------------------------------------------------------------------------------------------
# concurrency: one run per output directory
# ---------------------------------------------------------------------------------------------------------------------
def _run_in_process(config: str, **overrides: Any) -> str:
    from monai.bundle import run

    with pytest.raises(SystemExit) as exc:
        run(config_file=config, **overrides)
    return str(exc.value.code)


@pytest.mark.parametrize("holder", ["live-pid", "other-host"])
def test_lock_held_by_another_run(holder: str, tmp_path: Path, medmnist_dir: Path, shared_data: Path,
                                  breast: dict) -> None:
    ctx = _ctx(tmp_path, medmnist_dir, shared_data, breast)
    ctx.out.mkdir()
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-01-01T00:00:00", "command": "run A"}
    if holder == "other-host":
        info.update(pid=1, host="gpu-node-17")
    (ctx.out / LOCK_NAME).write_text(json.dumps(info))
    last = _run_in_process(TRAIN_2D, **ctx.train2d())
    assert last.startswith(PREFIX) and str(ctx.out) in last and "in use by another run" in last
    assert f"pid {info['pid']} on host {info['host']}" in last and "run A" in last
    # the holder's directory is left exactly as it was: its lock, and no status of ours
    assert sorted(p.name for p in ctx.out.iterdir()) == [LOCK_NAME]
    assert json.loads((ctx.out / LOCK_NAME).read_text()) == info


@pytest.mark.parametrize("kind", ["dead-pid", "unreadable"])
def test_stale_lock_is_taken_over(kind: str, tmp_path: Path, medmnist_dir: Path, shared_data: Path, breast: dict,
                                  capsys: pytest.CaptureFixture) -> None:
    from monai.bundle import run

    ctx = _ctx(tmp_path, medmnist_dir, shared_data, breast)
    ctx.out.mkdir()
    lock = ctx.out / LOCK_NAME
    if kind == "dead-pid":
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()
        lock.write_text(json.dumps({"pid": child.pid, "host": socket.gethostname(), "started": "x", "command": "A"}))
    else:
        lock.write_text("{not json")
        os.utime(lock, (time.time() - 3600, time.time() - 3600))
    run(config_file=TRAIN_2D, **ctx.train2d(ipc=1))
    assert "WARNING - output_dir" in capsys.readouterr().err  # "...: taking over a stale lock (why; holder)"
    assert not lock.exists()
    assert json.loads((ctx.out / "status.json").read_text())["status"] == "finished"
    assert json.loads((ctx.out / "metrics.json").read_text())["status"] == "finished"


def test_two_runs_on_one_output_dir(tmp_path: Path, medmnist_dir: Path, shared_data: Path, breast: dict) -> None:
    """Issue 13: both runs used to exit 0 with metrics of one and synthetic.pt of the other. Now the second one
    stops at once, naming the first; the first finishes with its own seed in every file."""
    ctx = _ctx(tmp_path, medmnist_dir, shared_data, breast)
    first = {**ctx.train2d(seed=1, eval_epochs=30), "preset_overrides": "{'width': 8}"}
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(bundle_cmd(TRAIN_2D, **first), cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (ctx.out / LOCK_NAME).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert (ctx.out / LOCK_NAME).exists(), "the first run never took the lock"
        last = _run_in_process(TRAIN_2D, **ctx.train2d(seed=2))
        assert "in use by another run" in last and f"pid {proc.pid}" in last
    finally:
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    metrics = json.loads((ctx.out / "metrics.json").read_text())
    assert metrics["seed"] == 1 and metrics["status"] == "finished"
    assert SyntheticSet.load(ctx.out / "synthetic.pt").meta["seed"] == 1
    status = json.loads((ctx.out / "status.json").read_text())
    assert status["status"] == "finished" and status["pid"] == proc.pid


# ---------------------------------------------------------------------------------------------------------------------
# a failure after final artefacts were written leaves none of them looking final
# ---------------------------------------------------------------------------------------------------------------------
def test_failure_after_saving_moves_artefacts_aside(tmp_path: Path, medmnist_dir: Path, shared_data: Path,
                                                    breast: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from monai_distill.evaluation import EvaluationProtocol

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("evaluation crashed")

    monkeypatch.setattr(EvaluationProtocol, "evaluate_set", broken)
    ctx = _ctx(tmp_path, medmnist_dir, shared_data, breast)
    last = _run_in_process(TRAIN_2D, **ctx.train2d())
    assert last == f"{PREFIX}RuntimeError: evaluation crashed (traceback in {ctx.out / 'error.log'})"
    status = json.loads((ctx.out / "status.json").read_text())
    assert status["status"] == "failed" and status["error_type"] == "RuntimeError"
    assert set(status["moved_to_failed"]) == {"failed/synthetic.pt", "failed/synthetic.png"}
    assert not (ctx.out / "synthetic.pt").exists() and (ctx.out / "failed" / "synthetic.pt").is_file()
    assert "evaluation crashed" in (ctx.out / "error.log").read_text()


def test_run_status_keeps_an_earlier_runs_files(tmp_path: Path) -> None:
    """Only what the failing run itself wrote is moved; the Python API gets the exception itself."""
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="boom"), run_status(tmp_path, ["metrics.json", "synthetic.pt"]):
        (tmp_path / "synthetic.pt").write_bytes(b"new")
        raise ValueError("boom")
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "failed" / "synthetic.pt").is_file()
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["error"] == "boom" and status["moved_to_failed"] == ["failed/synthetic.pt"]


def test_lock_api(tmp_path: Path) -> None:
    with OutputDirLock(tmp_path / "o", command="A") as lock:
        assert json.loads(lock.path.read_text())["command"] == "A"
        with pytest.raises(RunError, match="in use by another run"):
            OutputDirLock(tmp_path / "o").acquire()
    assert not (tmp_path / "o" / LOCK_NAME).exists()
