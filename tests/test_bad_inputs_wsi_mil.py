"""Bad inputs to the WSI and MIL bundles (issue 13): every case stops with exit code != 0, a last line that names the
culprit (option or file), and an output directory that holds nothing that looks like a finished result.

Bundles: ``wsi_tiling``, ``wsi_synthetic_bags``, ``mil_slide_classification`` (train.json and evaluate.json), on a
small real-tissue cohort (six pyramidal TIFFs, ``wsi.cohort``). A few representative cases run as users do
(``python -m monai.bundle run ...`` in a subprocess, the last line of stderr is checked); the others call
``monai.bundle.run`` in this process and check the ``SystemExit`` that ``monai_distill.runs.cli_main`` raises (its
message is what Python prints as the last stderr line).

What is left in ``output_dir``:

- ``nothing``: a bad option is refused when the workflow is built, before the output directory is even created;
- ``failed``: the run started (it holds the lock and writes ``status.json``), then refused its input before any
  heavy work: ``status.json`` says ``failed`` with the same message, no lock is left, and no final artefact
  (``model.pt``, ``metrics.json``, ``manifest.csv``, ...) is in the output directory.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import torch
from monai.bundle import run as bundle_run

from mil.bags import Bag, load_bag, save_bag
from mil.features import EncoderConfig
from mil.real_bags import make_real_bags
from mil.train import MILTrainer
from mil.workflows import MILTrainWorkflow
from monai_distill.runs import LOCK_NAME
from wsi.cohort import build_cohort, load_pools
from wsi.grid import PatchGrid
from wsi.workflows import TilingWorkflow, coords_path

pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file")  # MONAI's notice on every bundle run

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "tiling": REPO_ROOT / "bundles" / "wsi_tiling" / "configs" / "train.json",
    "bags": REPO_ROOT / "bundles" / "wsi_synthetic_bags" / "configs" / "train.json",
    "mil": REPO_ROOT / "bundles" / "mil_slide_classification" / "configs" / "train.json",
    "mil_eval": REPO_ROOT / "bundles" / "mil_slide_classification" / "configs" / "evaluate.json",
}
# What a finished run leaves in output_dir; none of it may be there after a failed run.
FINAL = {
    "tiling": ("manifest.csv", "tiling_config.json"),
    "bags": ("manifest.csv",),
    "mil": ("model.pt", "metrics.json", "predictions.csv", "history.csv"),
    "mil_eval": ("metrics.json", "predictions.csv", "checkpoint_info.json"),
}
PATCH, LEVEL = 32, 1
COMMON = {"progress": False, "num_threads": 1}
TILING = {**COMMON, "patch_size": PATCH, "level": LEVEL, "thumbnail_size": 256}
MIL = {**COMMON, "epochs": 2, "device": "cpu", "n_heatmaps": 0, "test_split": "test"}
BAGS = {**COMMON, "patch_size": PATCH, "level": LEVEL, "method": "random", "device": "cpu"}


# ---------------------------------------------------------------------------------------------------------------------
# inputs: one real-tissue cohort, its tiling and real bags, and damaged copies of them
# ---------------------------------------------------------------------------------------------------------------------
def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _copy_bags(src: Path, dst: Path, change: Callable[[Bag], Bag | None]) -> Path:
    """Bags of ``src`` rewritten through ``change`` into ``dst`` (no manifest: every ``*.pt`` is a bag)."""
    dst.mkdir(parents=True)
    for file in sorted(src.glob("*.pt")):
        bag = change(load_bag(file))
        if bag is not None:
            save_bag(bag, dst / file.name)
    return dst


def _relabel(labels: dict[str, int]) -> Callable[[Bag], Bag]:
    def change(bag: Bag) -> Bag:
        bag.label = labels.get(bag.slide_id, bag.label)
        return bag

    return change


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("bad_inputs")
    cohort = root / "cohort"
    table = build_cohort(cohort, n_slides=6, size=(1024, 768), seed=0, pools=load_pools(shared_data, piece_size=128))
    csv = cohort / "cohort.csv"
    tiling = root / "tiling"
    TilingWorkflow(csv, tiling, patch_size=PATCH, level=LEVEL, thumbnail_size=256, progress=False).run()
    make_real_bags(tiling, root / "real", split="train", progress=False)
    bags = root / "real" / "bags"
    train_ids = list(table.slide_id[table.split == "train"])
    rows = table[["slide_path", "label", "split", "slide_id"]].to_dict("records")
    absolute = [{**r, "slide_path": str(cohort / r["slide_path"])} for r in rows]
    d = root / "variants"
    d.mkdir()

    # bag directories
    one_label = _copy_bags(bags, d / "one_label", _relabel(dict.fromkeys(train_ids, 1)))
    label2 = _copy_bags(bags, d / "label2", _relabel({train_ids[1]: 2}))
    gap = _copy_bags(bags, d / "gap", _relabel({s: 2 for s in train_ids if s in set(train_ids[1::2])}))
    gen = torch.Generator().manual_seed(0)
    feat64 = _copy_bags(bags, d / "feat64", lambda b: Bag(b.slide_id, b.label, features=torch.randn(len(b), 64,
                                                                                                      generator=gen)))
    truncated = _copy_bags(bags, d / "truncated", lambda b: b)
    victim = truncated / f"{train_ids[0]}.pt"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    not_a_bag = _copy_bags(bags, d / "not_a_bag", lambda b: b)
    torch.save({"images": torch.zeros(2, 3, 8, 8)}, not_a_bag / f"{train_ids[0]}.pt")
    (d / "empty_bags").mkdir()

    # slide lists
    no_label_col = _write_csv(d / "no_label_column.csv", [{"slide_path": r["slide_path"], "split": r["split"]}
                                                          for r in absolute])
    all_missing = _write_csv(d / "all_missing.csv", [{**r, "slide_path": f"moved/{r['slide_id']}.tif"} for r in rows])
    text_label = _write_csv(d / "text_label.csv", [{**r, "label": "tumour" if r["label"] else "normal"}
                                                   for r in absolute])
    test_label7 = _write_csv(d / "test_label7.csv", [{**r, "label": 7 if r["split"] == "test" and r["label"] else
                                                      r["label"]} for r in absolute])
    train_label2 = _write_csv(d / "train_label2.csv", [{**r, "label": 2 if r["slide_id"] == train_ids[1] else
                                                        r["label"]} for r in absolute])
    duplicate = _write_csv(d / "duplicate.csv", [absolute[0], {**absolute[1], "slide_id": absolute[0]["slide_id"]}])
    (d / "slides.txt").write_text("\n".join(r["slide_path"] for r in absolute))

    # saved artefacts: checkpoints
    enc = EncoderConfig()
    trainer = MILTrainer("mean", 128, 2, device="cpu", progress=False)
    checkpoint = trainer.save(d / "model.pt", {"encoder": enc.to_dict(), "in_channels": 3, "input_size": PATCH,
                                                "tiling": {"patch_size": PATCH, "level": LEVEL, "mpp": None}})
    truncated_ckpt = d / "truncated_model.pt"
    truncated_ckpt.write_bytes(checkpoint.read_bytes()[:1000])
    eval_label2 = _write_csv(d / "eval_label2.csv", [{**r, "label": 2 if r["split"] == "test" else r["label"]}
                                                     for r in absolute])
    return SimpleNamespace(
        root=root, csv=csv, table=table, tiling=tiling, bags=bags, train_ids=train_ids, one_label=one_label,
        label2=label2, gap=gap, feat64=feat64, truncated=truncated, victim=victim, not_a_bag=not_a_bag,
        empty_bags=d / "empty_bags", no_label_col=no_label_col, all_missing=all_missing, text_label=text_label,
        test_label7=test_label7, train_label2=train_label2, duplicate=duplicate, txt=d / "slides.txt",
        checkpoint=checkpoint, truncated_ckpt=truncated_ckpt, eval_label2=eval_label2, wsi_dir=shared_data / "wsi",
    )


# ---------------------------------------------------------------------------------------------------------------------
# the matrix
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One bad input.

    Attributes:
        bundle: key of ``CONFIGS``.
        overrides: bundle options given the inputs (``output_dir`` is added).
        culprit: regex the last line must match (the option or file, and what was wrong).
        left: ``nothing`` (output_dir not created) or ``failed`` (status.json says failed, no final artefact).
        cli: run as a subprocess (``python -m monai.bundle run``) instead of in this process.
        env: environment variables of the run.
        check: further assertions on ``(inputs, output_dir)``.
    """

    bundle: str
    overrides: Callable[[SimpleNamespace], dict[str, Any]]
    culprit: str
    left: str = "nothing"
    cli: bool = False
    env: dict[str, str] = field(default_factory=dict)
    check: Callable[[SimpleNamespace, Path], None] | None = None


def _no_features(i: SimpleNamespace, out: Path) -> None:
    assert not (out.parent / "features").exists(), "the encoder ran before the bad option was refused"


def _no_model_anywhere(i: SimpleNamespace, out: Path) -> None:
    assert not list(out.rglob("model.pt")), "a model.pt was written although the bags could not be trained on"


def _manifest_in_failed(i: SimpleNamespace, out: Path) -> None:
    assert (out / "failed" / "manifest.csv").is_file()
    assert (pd.read_csv(out / "failed" / "manifest.csv").status == "failed").all()


def _lock_untouched(i: SimpleNamespace, out: Path) -> None:
    holder = json.loads((out / LOCK_NAME).read_text())
    assert holder["command"] == "the other run"  # the other run's lock is still there, untouched
    assert not (out / "status.json").exists()


def _tile(**kw: Any) -> Callable[[SimpleNamespace], dict[str, Any]]:
    return lambda i: {"slides": i.csv, **TILING, **kw}


def _mil(**kw: Any) -> Callable[[SimpleNamespace], dict[str, Any]]:
    return lambda i: {"train_bags": i.bags, "test_slides": i.csv, **MIL, **kw}


def _bags(**kw: Any) -> Callable[[SimpleNamespace], dict[str, Any]]:
    return lambda i: {"slides": i.csv, **BAGS, **kw}


WORLD2 = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}

CASES: dict[str, Case] = {
    # ---- wsi_tiling options: the whole run fails at its start, not each slide's manifest row
    "tiling-patch_size-0": Case("tiling", _tile(patch_size=0), r"--patch_size must be >= 1, got 0", cli=True),
    "tiling-backend-bogus": Case("tiling", _tile(backend="bogus"),
                                 r"--backend must be one of cucim, openslide, tifffile; got 'bogus'", cli=True),
    "tiling-patch_size-1.7": Case("tiling", _tile(patch_size=1.7),
                                  r"--patch_size must be a whole number >= 1, got 1\.7"),
    "tiling-tissue_threshold-1.5": Case("tiling", _tile(tissue_threshold=1.5),
                                        r"--tissue_threshold must be a finite number in \[0\.0, 1\.0\], got 1\.5"),
    "tiling-level-negative": Case("tiling", _tile(level=-1), r"--level must be >= 0, got -1"),
    "tiling-mpp-0": Case("tiling", _tile(level=None, mpp=0), r"--mpp must be a finite number > 0, got 0"),
    "tiling-level-and-mpp": Case("tiling", _tile(level=1, mpp=0.5), r"--level and --mpp: give one of them"),
    "tiling-stride-0": Case("tiling", _tile(stride=0), r"--stride must be >= 1, got 0"),
    "tiling-mask_options-unknown": Case("tiling", _tile(mask_options={"bogus": 1}),
                                        r"--mask_options: unknown tissue mask option\(s\) \['bogus'\]"),
    "tiling-level-beyond-every-slide": Case("tiling", _tile(level=5), r"all 6 slide\(s\) failed to tile.*level 5 was "
                                            r"requested", left="failed", check=_manifest_in_failed),
    # ---- slide lists
    "slides-missing-path": Case("tiling", lambda i: {**TILING, "slides": i.root / "nowhere"},
                                r"--slides '.*nowhere' does not exist", left="failed"),
    "slides-not-a-csv": Case("tiling", lambda i: {**TILING, "slides": i.txt},
                             r"--slides '.*slides\.txt' must be a directory of slides or a \.csv", left="failed"),
    "slides-csv-no-label-column": Case("tiling", lambda i: {**TILING, "slides": i.no_label_col},
                                       r"no_label_column\.csv' has no column\(s\) \['label'\]", left="failed"),
    "slides-csv-all-files-missing": Case("tiling", lambda i: {**TILING, "slides": i.all_missing},
                                         r"all_missing\.csv': none of its 6 slide file\(s\) exists.*moved/slide_000",
                                         left="failed"),
    "slides-csv-duplicate-ids": Case("tiling", lambda i: {**TILING, "slides": i.duplicate},
                                     r"two slides in '.*duplicate\.csv' have the id 'slide_000'", left="failed"),
    # ---- wsi_synthetic_bags
    "bags-method-bogus": Case("bags", _bags(method="bogus"), r"--method: unknown method 'bogus'.*histodd"),
    "bags-ipc-1.7": Case("bags", _bags(ipc=1.7), r"--ipc must be a whole number >= 1, got 1\.7"),
    "bags-seed-abc": Case("bags", _bags(seed="abc"), r"--seed must be a whole number, got 'abc'"),
    "bags-arch-bogus": Case("bags", _bags(arch="bogus"), r"--arch must be one of .*resnetap10.*; got 'bogus'"),
    "bags-patch_size-0": Case("bags", _bags(patch_size=0), r"--patch_size must be >= 1, got 0"),
    "bags-text-label-without-label_map": Case("bags", lambda i: {**BAGS, "slides": i.text_label},
                                              r"label '(normal|tumour)' of slide 'slide_000' in '.*text_label\.csv' is "
                                              r"not a class index.*--label_map", left="failed"),
    "bags-slide-folder-has-no-labels": Case("bags", lambda i: {**BAGS, "slides": i.wsi_dir, "patch_size": 256,
                                                               "level": None},
                                            r"slide 'CMU-1-Small-Region' has no label", left="failed"),
    "bags-label-2-with-num_classes-2": Case("bags", lambda i: {**BAGS, "slides": i.train_label2, "num_classes": 2},
                                            r"--num_classes 2: slide 'slide_001' .* has label 2", left="failed"),
    "bags-torchrun-without-multi_gpu_config": Case("bags", _bags(), r"WORLD_SIZE=2 .*wsi_synthetic_bags.*"
                                                   r"multi_gpu_train\.json", env=WORLD2),
    # ---- mil_slide_classification options: refused before any feature is extracted
    "mil-model-bogus": Case("mil", _mil(model="bogus"), r"--model must be one of .*clam_sb.*; got 'bogus'", cli=True,
                            check=_no_features),
    "mil-encoder-bogus": Case("mil", _mil(encoder="bogus"), r"--encoder must be one of .*resnetap10.*; got 'bogus'",
                              check=_no_features),
    "mil-head_options-unknown": Case("mil", _mil(head_options={"bogus": 1}), r"--head_options \{'bogus': 1\}: not "
                                     r"valid for head 'clam_sb'", check=_no_features),
    "mil-seed-abc": Case("mil", _mil(seed="abc"), r"--seed must be a whole number >= 0, got 'abc'", check=_no_features),
    "mil-epochs-0": Case("mil", _mil(epochs=0), r"--epochs must be >= 1, got 0"),
    "mil-val_fraction-1.5": Case("mil", _mil(val_fraction=1.5), r"--val_fraction must be .*got 1\.5"),
    "mil-num_classes-1": Case("mil", _mil(num_classes=1), r"--num_classes must be >= 2, got 1"),
    "mil-backend-bogus": Case("mil", _mil(backend="bogus"), r"--backend must be one of .*openslide.*'bogus'"),
    "mil-device-bogus": Case("mil", _mil(device="bogus"), r"--device must be cpu, cuda or cuda:N.*'bogus'"),
    # ---- bags: checked before training, nothing trained or written
    "mil-bags-all-one-label": Case("mil", _mil(train_bags=None), r"--train_bags '.*one_label': all 4 training "
                                   r"bag\(s\) have label 1; .*at least two classes", left="failed", cli=True,
                                   check=_no_model_anywhere),
    "mil-bags-label-2-on-binary-head": Case("mil", _mil(num_classes=2), r"--train_bags '.*label2': slide 'slide_001' "
                                            r"has label 2, but the head has 2 classes", left="failed", cli=True,
                                            check=_no_model_anywhere),
    "mil-bags-label-gap": Case("mil", _mil(), r"labels \[0, 2\] leave class\(es\) \[1\] without a training bag",
                               left="failed"),
    "mil-bags-feature-dim-differs-from-encoder": Case("mil", _mil(), r"--train_bags '.*feat64': bag 'slide_000' holds "
                                                      r"64 features per instance but encoder 'resnetap10' gives 128",
                                                      left="failed", cli=True, check=_no_model_anywhere),
    "mil-bags-truncated-file": Case("mil", _mil(), r"'.*truncated/slide_000\.pt' is not a readable bag file",
                                    left="failed", check=_no_model_anywhere),
    "mil-bags-not-a-bag-file": Case("mil", _mil(), r"'.*not_a_bag/slide_000\.pt' is not a monai-distill-bag file",
                                    left="failed"),
    "mil-bags-empty-directory": Case("mil", _mil(), r"--train_bags: no bags in '.*empty_bags'", left="failed"),
    "mil-bags-missing-directory": Case("mil", lambda i: {**_mil()(i), "train_bags": i.root / "no_bags"},
                                       r"--train_bags: bag directory '.*no_bags' does not exist", left="failed"),
    # ---- held-out slides
    "mil-test-label-7-typo": Case("mil", lambda i: {**_mil()(i), "test_slides": i.test_label7},
                                  r"--test_slides '.*test_label7\.csv': slide 'slide_005' has label 7, but the head "
                                  r"has 2 classes \(0\.\.1, from the training bags\)", left="failed"),
    "mil-test-split-unknown": Case("mil", _mil(test_split="bogus"), r"--test_split 'bogus': no slide of that split",
                                   left="failed"),
    "mil-test-slides-are-training-slides": Case("mil", lambda i: {**_mil()(i), "test_slides": i.tiling,
                                                                  "test_split": None},
                                                r"both training bags .* and held-out test slides", left="failed"),
    # ---- evaluate.json: saved artefacts
    "mil-eval-truncated-checkpoint": Case("mil_eval", lambda i: {**_mil()(i), "checkpoint": i.truncated_ckpt},
                                          r"--checkpoint: '.*truncated_model\.pt' is not a readable MIL checkpoint",
                                          left="failed", cli=True),
    "mil-eval-missing-checkpoint": Case("mil_eval", lambda i: {**_mil()(i), "checkpoint": i.root / "nope.pt"},
                                        r"--checkpoint: MIL checkpoint '.*nope\.pt' does not exist", left="failed"),
    "mil-eval-bag-as-checkpoint": Case("mil_eval", lambda i: {**_mil()(i), "checkpoint": i.bags / "slide_000.pt"},
                                       r"--checkpoint: '.*slide_000\.pt' is not a monai-distill-mil checkpoint",
                                       left="failed"),
    "mil-eval-test-label-2-on-binary-head": Case("mil_eval", lambda i: {**_mil()(i), "checkpoint": i.checkpoint,
                                                                        "test_slides": i.eval_label2},
                                                 r"slide 'slide_003' has label 2, but the head has 2 classes .*"
                                                 r"--checkpoint", left="failed"),
    # ---- concurrency
    "mil-torchrun-without-multi_gpu_config": Case("mil", _mil(), r"WORLD_SIZE=2 .*mil_slide_classification.*"
                                                  r"multi_gpu_train\.json", env=WORLD2, cli=True, check=_no_features),
    "tiling-torchrun-without-multi_gpu_config": Case("tiling", _tile(), r"WORLD_SIZE=2 .*wsi_tiling.*"
                                                     r"multi_gpu_train\.json", env=WORLD2),
    "tiling-output_dir-in-use": Case("tiling", _tile(), r"output_dir '.*' is in use by another run \(pid \d+ on host",
                                     left="locked", cli=True, check=_lock_untouched),
    "mil-output_dir-in-use": Case("mil", _mil(), r"output_dir '.*' is in use by another run", left="locked",
                                  check=_lock_untouched),
}
# Bag-directory cases name their directory in the case id's last word(s); map them here.
BAG_DIRS = {"mil-bags-all-one-label": "one_label", "mil-bags-label-2-on-binary-head": "label2",
            "mil-bags-label-gap": "gap", "mil-bags-feature-dim-differs-from-encoder": "feat64",
            "mil-bags-truncated-file": "truncated", "mil-bags-not-a-bag-file": "not_a_bag",
            "mil-bags-empty-directory": "empty_bags"}


@pytest.fixture(scope="module")
def live_pid() -> Any:
    """A live process of this host (not this one) that plays the run holding the lock."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _run(case: Case, overrides: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """(exit code, last stderr line) of the bundle run."""
    config = str(CONFIGS[case.bundle])
    if case.cli:
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config]
        for key, value in overrides.items():
            cmd += [f"--{key}", str(value)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **case.env}
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300)
        return proc.returncode, _last_line(proc.stderr)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    before = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exc:
            bundle_run(config_file=config, logging_file=False, **overrides)
    finally:
        torch.set_num_threads(before)
    return (1 if isinstance(exc.value.code, str) else int(exc.value.code or 0)), _last_line(str(exc.value.code))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, inputs: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   live_pid: int) -> None:
    case = CASES[name]
    out = tmp_path / "out"
    overrides = case.overrides(inputs)
    if name in BAG_DIRS:
        overrides["train_bags"] = getattr(inputs, BAG_DIRS[name])
    overrides["output_dir"] = out
    if case.bundle.startswith("mil"):
        overrides["feature_cache"] = tmp_path / "features"
    if case.left == "locked":  # another run holds the directory
        out.mkdir()
        (out / LOCK_NAME).write_text(json.dumps({"pid": live_pid, "host": socket.gethostname(),
                                                 "started": "earlier", "command": "the other run"}))
    code, last = _run(case, overrides, monkeypatch)

    assert code != 0
    assert last.startswith("monai-distill: error: "), last
    assert re.search(case.culprit, last), f"{case.culprit!r} not in {last!r}"
    if case.left == "nothing":
        assert not out.exists(), sorted(p.name for p in out.iterdir())
    elif case.left == "failed":
        status = json.loads((out / "status.json").read_text())
        assert status["status"] == "failed" and re.search(case.culprit, status["error"]), status
        assert (out / "error.log").is_file() and not (out / LOCK_NAME).exists()
        left = [f for f in FINAL[case.bundle] if (out / f).exists()]
        assert not left, f"a failed run left {left} in {out}"
    if case.check is not None:
        case.check(inputs, out)


def test_the_matrix_is_big_enough() -> None:
    assert len(CASES) >= 28 and sum(c.cli for c in CASES.values()) <= 10


# ---------------------------------------------------------------------------------------------------------------------
# faults that must not corrupt: stale locks, damaged resume files, a late failure
# ---------------------------------------------------------------------------------------------------------------------
def test_stale_lock_is_taken_over(inputs: SimpleNamespace, tmp_path: Path) -> None:
    """A lock left by a killed run (its process is gone) does not block the next run, which finishes."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "command": "killed"}))
    bundle_run(config_file=str(CONFIGS["tiling"]), logging_file=False, slides=str(inputs.csv), output_dir=str(out),
               **TILING)
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    assert (pd.read_csv(out / "manifest.csv").status == "done").all() and not (out / LOCK_NAME).exists()


def test_damaged_resume_files_are_redone(inputs: SimpleNamespace, tmp_path: Path) -> None:
    """A truncated grid (tiling) or bag (real bags) of a finished slide is made again on resume, not kept."""
    out = tmp_path / "tiling"
    TilingWorkflow(inputs.csv, out, patch_size=PATCH, level=LEVEL, thumbnail_size=256, progress=False).run()
    grid = coords_path(out, "slide_002")
    whole = grid.read_text()
    grid.write_text(whole[: len(whole) // 2])
    TilingWorkflow(inputs.csv, out, patch_size=PATCH, level=LEVEL, thumbnail_size=256, progress=False).run()
    assert len(PatchGrid.load(grid)) > 0
    bags = tmp_path / "real"
    make_real_bags(out, bags, split="train", progress=False)
    victim = bags / "bags" / f"{inputs.train_ids[0]}.pt"
    victim.write_bytes(victim.read_bytes()[:5000])
    make_real_bags(out, bags, split="train", progress=False)
    assert len(load_bag(victim)) > 0


def test_a_late_failure_moves_the_model_aside(inputs: SimpleNamespace, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that dies after model.pt was written (here: while writing predictions) leaves no model.pt that looks
    like a finished run's: it is moved to failed/, and status.json says failed with the error."""

    def broken(self, *args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(MILTrainWorkflow, "_write_outputs", broken)
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"monai-distill: error: OSError: .*No space left on device.*error\.log"):
        bundle_run(config_file=str(CONFIGS["mil"]), logging_file=False, output_dir=str(out),
                   feature_cache=str(tmp_path / "features"), **_mil(epochs=1)(inputs))
    assert not (out / "model.pt").exists() and (out / "failed" / "model.pt").is_file()
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and "failed/model.pt" in status["moved_to_failed"]
