"""The mil_slide_classification bundle: the contract command for every head, evaluate.json, metadata, config keys.

Training bags are real bags of the cohort's training slides (synthetic bags use the same format and come from the
per-slide distillation); held-out slides are the cohort's test split. Every run shares one feature cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from monai.bundle import ConfigParser, verify_metadata

from mil.bags import BagError
from mil.workflows import MILTrainWorkflow

from ..bundles.helpers import REPO_ROOT, run_bundle

BUNDLE = REPO_ROOT / "bundles" / "mil_slide_classification" / "configs"
TRAIN = "bundles/mil_slide_classification/configs/train.json"
EVALUATE = "bundles/mil_slide_classification/configs/evaluate.json"
NAMES = ["clam_sb", "clam_mb", "dsmil", "transmil", "abmil", "mean", "max"]
CONTRACT_KEYS = {"model", "auc", "acc", "balanced_acc", "epochs", "seconds_per_epoch", "device"}
FAST = {"epochs": 3, "device": "cpu", "num_threads": 1, "n_heatmaps": 1, "progress": False}


@pytest.mark.filterwarnings("ignore:No hash value provided")  # the schema is a local file, on purpose
def test_metadata_verifies_offline() -> None:
    schema = REPO_ROOT / "bundles" / "schema" / "meta_schema.json"
    verify_metadata(meta_file=str(BUNDLE / "metadata.json"), filepath=str(schema))


@pytest.fixture(scope="module")
def contract_runs(tmp_path_factory: pytest.TempPathFactory, train_bag_dir: Path, mil_tiling: Path, mil_cohort,
                  feature_cache: Path) -> dict[str, Path]:
    """``python -m monai.bundle run --config_file .../train.json --train_bags DIR --test_slides TEST --model M
    --output_dir RES`` once per head. clam_sb gets the cohort CSV (tiled on the fly), the others the tiling output."""
    cohort_root, _ = mil_cohort
    out = tmp_path_factory.mktemp("mil_bundle")
    runs = {}
    for name in NAMES:
        test_slides = cohort_root / "cohort.csv" if name == "clam_sb" else mil_tiling
        res = out / name
        run_bundle(TRAIN, train_bags=train_bag_dir, test_slides=test_slides, test_split="test", model=name,
                   output_dir=res, feature_cache=feature_cache, **FAST)
        runs[name] = res
    return runs


@pytest.mark.parametrize("name", NAMES)
def test_contract_command(name: str, contract_runs: dict[str, Path], mil_cohort) -> None:
    _, table = mil_cohort
    res = contract_runs[name]
    metrics = json.loads((res / "metrics.json").read_text())
    assert set(metrics) >= CONTRACT_KEYS
    assert metrics["model"] == name and metrics["device"] == "cpu" and 1 <= metrics["epochs"] <= 3
    assert 0 <= metrics["auc"] <= 1 and 0 <= metrics["acc"] <= 1 and 0 <= metrics["balanced_acc"] <= 1
    assert metrics["seconds_per_epoch"] > 0 and metrics["train_source"] == "real"
    assert metrics["n_train_bags"] + metrics["n_val_bags"] == (table.split == "train").sum()
    preds = pd.read_csv(res / "predictions.csv")
    assert sorted(preds.slide_id) == sorted(table.slide_id[table.split == "test"])
    assert set(preds.columns) >= {"slide_id", "label", "pred", "prob_0", "prob_1"}
    assert len(metrics["heatmaps"]) == 1 and (res / metrics["heatmaps"][0]).is_file()
    assert (res / "model.pt").is_file() and (res / "history.csv").is_file()
    assert metrics["status"] == "finished" and json.loads((res / "status.json").read_text())["status"] == "finished"
    assert not (res / "failed").exists() and not (res / ".run.lock").exists()


def test_evaluate_reproduces_the_training_run(contract_runs: dict[str, Path], tmp_path: Path) -> None:
    """evaluate.json on the checkpoint, with the real test bags the training run made (a bag directory)."""
    res = contract_runs["clam_sb"]
    run_bundle(EVALUATE, checkpoint=res / "model.pt", test_slides=res / "test_bags", output_dir=tmp_path,
               feature_cache=res.parent / "eval_cache", **{k: v for k, v in FAST.items() if k != "epochs"})
    trained, evaluated = (json.loads((d / "metrics.json").read_text()) for d in (res, tmp_path))
    assert set(evaluated) >= CONTRACT_KEYS
    for key in ("model", "auc", "acc", "balanced_acc", "epochs"):
        assert evaluated[key] == pytest.approx(trained[key]), key
    assert pd.read_csv(tmp_path / "predictions.csv").equals(pd.read_csv(res / "predictions.csv"))


def test_cli_keys_reach_the_workflow(tmp_path: Path) -> None:
    overrides = {"train_bags": "bags", "test_slides": "t.csv", "output_dir": str(tmp_path), "model": "transmil",
                 "head_options": {"dim": 64}, "encoder": "convnet", "encoder_options": {"width": 8},
                 "epochs": 7, "lr": 1e-3, "weight_decay": 0.0, "patience": 0, "val_fraction": 0.0, "seed": 3,
                 "device": "cpu", "amp": False, "num_threads": 1, "test_split": "test", "max_test_patches": 50,
                 "patch_size": 64, "mpp": 1.0, "n_heatmaps": 0, "progress": False}
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "train.json"))
    parser.update(overrides)
    wf = parser.get_parsed_content("workflow")()  # "_mode_": "callable": the bundle builds it inside cli_main
    assert isinstance(wf, MILTrainWorkflow)
    assert (wf.model, wf.head_options, wf.encoder.name, wf.encoder.options) == ("transmil", {"dim": 64}, "convnet",
                                                                                 {"width": 8})
    c = wf.train_config
    assert (c.epochs, c.lr, c.weight_decay, c.patience, c.seed, c.device, c.amp, c.num_threads) == (
        7, 1e-3, 0.0, None, 3, "cpu", False, 1)
    assert (wf.val_fraction, wf.test_split, wf.max_test_patches, wf.n_heatmaps) == (0.0, "test", 50, 0)
    assert wf._tiling_options({"patch_size": 32, "level": 1}) == {
        "patch_size": 64, "level": None, "mpp": 1.0, "tissue_threshold": 0.5, "backend": "openslide"}
    evaluate = ConfigParser()
    evaluate.read_config(str(BUNDLE / "evaluate.json"))
    assert evaluate["workflow"]["_target_"] == "mil.workflows.MILEvaluateWorkflow"


def test_multi_gpu_config_keeps_the_workflow() -> None:
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "train.json"), str(BUNDLE / "multi_gpu_train.json")])
    assert "workflow" in parser.config and any("init_process_group" in s for s in parser["initialize"])
    assert parser["run"] == ["$monai_distill.runs.cli_main(@workflow)"]


def test_training_on_test_slides_is_refused(real_bags, mil_tiling: Path, tmp_path: Path) -> None:
    wf = MILTrainWorkflow(real_bags.root, mil_tiling, tmp_path, test_split="test", device="cpu", progress=False)
    with pytest.raises(BagError, match=r"both training bags .* and held-out test slides"):
        wf.run()
