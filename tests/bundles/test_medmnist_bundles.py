"""The two distillation bundles, run through ``python -m monai.bundle run`` on real MedMNIST data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from monai_distill.data import SyntheticSet

from .helpers import FAST, REPO_ROOT, numbers, run_bundle

TRAIN_2D = "bundles/medmnist2d_distillation/configs/train.json"
EVAL_2D = "bundles/medmnist2d_distillation/configs/evaluate.json"
TRAIN_3D = "bundles/organmnist3d_distillation/configs/train.json"
EVAL_3D = "bundles/organmnist3d_distillation/configs/evaluate.json"
MULTI_2D = "bundles/medmnist2d_distillation/configs/multi_gpu_train.json"
REQUIRED = {"method", "dataset", "ipc", "preset", "seed", "test_acc_mean", "test_acc_std", "test_balanced_acc_mean",
            "test_auc_mean", "n_eval_models", "eval_epochs", "distill_seconds", "eval_seconds", "peak_memory_mb"}


def _check_outputs(out, method, dataset, ipc, n_classes, shape):
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= REQUIRED
    assert (metrics["method"], metrics["dataset"], metrics["ipc"], metrics["preset"]) == (method, dataset, ipc, "quick")
    assert 0.0 <= metrics["test_acc_mean"] <= 1.0 and metrics["n_eval_models"] == 1
    syn = SyntheticSet.load(out / "synthetic.pt")
    assert syn.images.shape == (ipc * n_classes, *shape)
    assert (out / "synthetic.png").stat().st_size > 100
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    return metrics


@pytest.mark.parametrize("dataset", ["breastmnist", "pneumoniamnist"])
@pytest.mark.parametrize("method", ["random", "herding", "forgetting"])
def test_contract_2d(method, dataset, medmnist_dir, tmp_path):
    out = tmp_path / "out"
    run_bundle(TRAIN_2D, dataset=dataset, dataset_dir=medmnist_dir, method=method, ipc=10, preset="quick", seed=0,
               output_dir=out, **FAST)
    _check_outputs(out, method, dataset, 10, 2, (1, 28, 28))


# 64³ runs random only: herding at 64³ spent 4 min training its embedding network on 1188 volumes (the suite's
# longest test); herding's code path is the same at 28³, and 64³ loading, DSA and evaluation are covered by random.
@pytest.mark.parametrize(("size", "method"), [(28, "random"), (28, "herding"), (28, "forgetting"), (64, "random")])
def test_contract_3d(size, method, medmnist_dir, tmp_path):
    out = tmp_path / "out"
    fast = dict(FAST)
    if size == 64:  # 3D DSA over 1188 volumes of 64^3 dominates the selection training; it is unit-tested in augment/
        fast["preset_overrides"] = fast["preset_overrides"][:-1] + ", 'dsa': False}"
    run_bundle(TRAIN_3D, dataset="adrenalmnist3d", size=size, dataset_dir=medmnist_dir, method=method, ipc=2,
               preset="quick", seed=0, output_dir=out, **fast)
    _check_outputs(out, method, "adrenalmnist3d", 2, 2, (1, size, size, size))


@pytest.mark.parametrize("method", ["dc", "dsa", "dm"])
@pytest.mark.parametrize("dims", [2, 3])
def test_contract_matching_methods(method, dims, medmnist_dir, tmp_path):
    """DC/DSA/DM through the foundation contract command (a few iterations: the loops themselves are tested in
    tests/monai_distill/methods/test_dc_dsa_dm.py)."""
    out = tmp_path / "out"
    config, dataset, ipc, shape = ((TRAIN_2D, "breastmnist", 10, (1, 28, 28)) if dims == 2
                                   else (TRAIN_3D, "adrenalmnist3d", 2, (1, 28, 28, 28)))
    run_bundle(config, dataset=dataset, dataset_dir=medmnist_dir, method=method, ipc=ipc, preset="quick", seed=0,
               output_dir=out, method_options="{'iterations': 2}", **FAST)
    _check_outputs(out, method, dataset, ipc, 2, shape)
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 2


def test_same_seed_same_numbers(medmnist_dir, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        run_bundle(TRAIN_2D, dataset="breastmnist", dataset_dir=medmnist_dir, method="herding", ipc=5, seed=7,
                   output_dir=out, **FAST)
    assert numbers(outs[0] / "metrics.json") == numbers(outs[1] / "metrics.json")
    a, b = (SyntheticSet.load(o / "synthetic.pt") for o in outs)
    assert torch.equal(a.images, b.images)


@pytest.fixture(scope="module")
def saved_sets(medmnist_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    run_bundle(TRAIN_2D, dataset="breastmnist", dataset_dir=medmnist_dir, method="random", ipc=2,
               output_dir=root / "2d", evaluate=False, progress=False)
    run_bundle(TRAIN_3D, dataset="adrenalmnist3d", dataset_dir=medmnist_dir, method="random", ipc=2,
               output_dir=root / "3d", evaluate=False, progress=False)
    return root


@pytest.mark.parametrize("arch", ["convnet", "resnetap10", "lenet", "alexnet", "resnet18", "densenet121", "vit"])
def test_evaluate_every_arch(arch, saved_sets, medmnist_dir):
    from monai.bundle import run

    for dims, cfg in (("2d", EVAL_2D), ("3d", EVAL_3D)):
        out = saved_sets / dims / arch
        run(config_file=str(REPO_ROOT / cfg), synthetic=str(saved_sets / dims / "synthetic.pt"), arch=arch,
            dataset_dir=str(medmnist_dir), output_dir=str(out), eval_models=1, eval_epochs=2,
            preset_overrides={"width": 8}, progress=False)
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["arch"] == arch and metrics["eval_arch"] == arch
        assert metrics["method"] == "random" and metrics["dataset"] == "adrenalmnist3d" if dims == "3d" else True
        assert 0.0 <= metrics["test_acc_mean"] <= 1.0


def test_evaluate_full_upper_bound(medmnist_dir, tmp_path):
    out = tmp_path / "full"
    run_bundle(EVAL_2D, synthetic="full", dataset="breastmnist", dataset_dir=medmnist_dir, output_dir=out, **FAST)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "full" and metrics["n_train_images"] == 546


@pytest.mark.parametrize("bundle", ["medmnist2d_distillation", "organmnist3d_distillation"])
def test_metadata_verifies_offline(bundle, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text((REPO_ROOT / "bundles/schema/meta_schema.json").read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file",
         f"bundles/{bundle}/configs/metadata.json", "--filepath", str(schema)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "metadata is verified with no error" in proc.stdout + proc.stderr
    for name in ("train.json", "evaluate.json", "multi_gpu_train.json", "logging.conf"):
        assert (REPO_ROOT / "bundles" / bundle / "configs" / name).is_file()
    assert (REPO_ROOT / "bundles" / bundle / "docs" / "README.md").is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "kmeans"}, "valid names:"),
        ({"arch": "unet"}, "unknown network 'unet'"),
        ({"dataset": "pathmnist"}, "'pathmnist.npz' not found"),
        ({"dataset": "notaflag"}, "unknown MedMNIST flag 'notaflag'"),
        ({"ipc": 500}, "largest valid ipc is 147"),
    ],
)
def test_bad_input_fails_cleanly(overrides, message, medmnist_dir, tmp_path):
    out = tmp_path / "out"
    args = {"dataset": "breastmnist", "dataset_dir": medmnist_dir, "method": "random", "output_dir": out, **FAST}
    proc = run_bundle(TRAIN_2D, check=False, **{**args, **overrides})
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not (out / "synthetic.pt").exists() and not (out / "metrics.json").exists()


def test_unwritable_output_dir(medmnist_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = run_bundle(TRAIN_2D, check=False, dataset="breastmnist", dataset_dir=medmnist_dir, method="random",
                      output_dir=blocker / "out", **FAST)
    assert proc.returncode != 0
    assert "is not writable" in proc.stdout + proc.stderr


def test_torchrun_two_ranks_match_one_process(medmnist_dir, tmp_path):
    """multi_gpu_train.json on 2 CPU processes (gloo): K nets split across ranks, same numbers as 1 process."""
    common = {"dataset": "breastmnist", "dataset_dir": medmnist_dir, "method": "random", "ipc": 5, "seed": 1,
              **FAST, "eval_models": 2}
    run_bundle(TRAIN_2D, output_dir=tmp_path / "one", **common)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "monai.bundle", "run", "--config_file", f"['{TRAIN_2D}','{MULTI_2D}']",
           "--output_dir", str(tmp_path / "two")]
    for k, v in common.items():
        cmd += [f"--{k}", str(v)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    one, two = numbers(tmp_path / "one/metrics.json"), numbers(tmp_path / "two/metrics.json")
    assert one["per_model"] == two["per_model"]
