"""The ``histodd_patches`` bundle on a real H&E patch ``.npz`` (patches of the shared slides and tiles)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from monai_distill.data import SyntheticSet

from .helpers import FAST, REPO_ROOT, run_bundle

CONFIGS = REPO_ROOT / "bundles" / "histodd_patches" / "configs"
TRAIN = "bundles/histodd_patches/configs/train.json"
# One outer step of one synthetic update, one pool network trained for one epoch: the pipeline, not the numbers.
TINY = "{'iterations': 1, 'outer_loop': 1, 'batch_real': 8, 'batch_train': 16, 'pool_size': 1, 'pool_epochs': 1}"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def he_npz(tmp_path_factory, shared_data):
    """The real H&E patch task of tests/monai_distill/methods/test_histodd.py (built once per session)."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from histodd_data import cached_he_patch_npz

    return cached_he_patch_npz(tmp_path_factory.getbasetemp(), shared_data=shared_data, patch_size=32,
                               max_train_per_class=150, max_test_per_class=60)


@pytest.fixture(scope="module")
def distilled(he_npz, tmp_path_factory):
    """The bundle's command line, as a user runs it (Histo-DD with every ingredient on)."""
    out = tmp_path_factory.mktemp("histodd") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # small networks: a second thread only contends on a loaded machine
        run_bundle(TRAIN, dataset=he_npz, ipc=2, preset="quick", seed=0, output_dir=out, method_options=TINY,
                   cache_dir=out.parent / "cache", **FAST)
    return out


def test_train_writes_the_contract_outputs(distilled, he_npz):
    metrics = json.loads((distilled / "metrics.json").read_text())
    assert (metrics["method"], metrics["ipc"], metrics["arch"], metrics["preset"]) == ("histodd", 2, "resnetap10",
                                                                                        "quick")
    assert metrics["dataset"].startswith("he_patches") and 0.0 <= metrics["test_acc_mean"] <= 1.0
    syn = SyntheticSet.load(distilled / "synthetic.pt")
    assert syn.images.shape == (12, 3, 32, 32) and torch.isfinite(syn.images).all()
    opts = syn.meta["options"]
    assert (opts["stain"], opts["model_augment"], opts["dsa"], opts["lr_img"], opts["distance"]) == (
        True, True, True, 5e-3, "l1")
    assert syn.meta["stain_template"]["stain_matrix"] and syn.meta["model_pool"]
    assert list((distilled.parent / "cache" / "model_pools").glob("*/model_0.pt"))
    assert (distilled / "synthetic.png").stat().st_size > 100


@pytest.mark.parametrize("arch", ["resnet18", "densenet121", "vit"])
def test_cross_architecture_evaluation(arch, distilled):
    from monai.bundle import run

    out = distilled / arch
    run(config_file=str(CONFIGS / "evaluate.json"), synthetic=str(distilled / "synthetic.pt"), arch=arch,
        output_dir=str(out), eval_models=1, eval_epochs=2, preset_overrides={"width": 8}, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["arch"] == arch and metrics["method"] == "histodd" and metrics["dataset"].startswith("he_patches")
    assert 0.0 <= metrics["test_acc_mean"] <= 1.0


@pytest.mark.parametrize(
    ("method", "overrides"),
    [("random", {}), ("herding", {}), ("histodd", {"stain": False, "model_augment": False, "dsa": False})],
)
def test_coresets_and_ablation_through_the_same_bundle(method, overrides, he_npz, tmp_path):
    from monai.bundle import run

    out = tmp_path / method
    run(config_file=str(CONFIGS / "train.json"), dataset=str(he_npz), method=method, ipc=2, output_dir=str(out),
        cache_dir=str(tmp_path / "cache"), method_options=eval(TINY) if method == "histodd" else {},
        eval_models=1, eval_epochs=2, preset_overrides={"width": 8, "embed_epochs": 1}, progress=False, **overrides)
    syn = SyntheticSet.load(out / "synthetic.pt")
    assert syn.meta["method"] == method and syn.images.shape == (12, 3, 32, 32)
    if method == "histodd":
        assert not any(syn.meta["options"][k] for k in ("stain", "model_augment", "dsa"))
        assert syn.meta["stain_template"] is None and syn.meta["model_pool"] is None
    else:
        assert "stain" not in syn.meta["options"]  # Histo-DD's settings go to Histo-DD only


def test_metadata_verifies_offline(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text((REPO_ROOT / "bundles/schema/meta_schema.json").read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file",
         "bundles/histodd_patches/configs/metadata.json", "--filepath", str(schema)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "metadata is verified with no error" in proc.stdout + proc.stderr
    for name in ("train.json", "evaluate.json", "multi_gpu_train.json", "logging.conf"):
        assert (CONFIGS / name).is_file()
    assert (REPO_ROOT / "bundles/histodd_patches/docs/README.md").is_file()
    assert (REPO_ROOT / "bundles/histodd_patches/LICENSE").is_file()


def test_interrupted_run_resumes_to_the_same_patches(he_npz, tmp_path, monkeypatch):
    """Checkpoint every iteration, stop after 2 of 4 (the workflow's test hook), resume: same synthetic patches."""
    from monai.bundle import run

    from monai_distill.workflows import INTERRUPT_ENV

    common = {"config_file": str(CONFIGS / "train.json"), "dataset": str(he_npz), "ipc": 2, "evaluate": False,
              "method_options": {**eval(TINY), "iterations": 4, "outer_loop": 2}, "cache_dir": str(tmp_path / "cache"),
              "preset_overrides": {"width": 8}, "checkpoint_every": 1, "progress": False}
    run(output_dir=str(tmp_path / "straight"), **common)
    monkeypatch.setenv(INTERRUPT_ENV, "2")
    with pytest.raises(SystemExit, match="interrupted after iteration 2"):  # cli_main's exit, as on the CLI
        run(output_dir=str(tmp_path / "resumed"), **common)
    assert not (tmp_path / "resumed" / "synthetic.pt").exists()
    monkeypatch.delenv(INTERRUPT_ENV)
    run(output_dir=str(tmp_path / "resumed"), resume=True, **common)
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["resumed_from"] == 2
    a, b = (SyntheticSet.load(tmp_path / d / "synthetic.pt") for d in ("straight", "resumed"))
    assert torch.equal(a.images, b.images)
