"""The mil_slide_classification bundle: the contract command for every head, evaluate.json, metadata, config keys.

Training bags are real bags of the cohort's training slides (synthetic bags use the same format and come from the
per-slide distillation); held-out slides are the cohort's test split. Every run shares one feature cache.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata

from mil.bags import BagError
from mil.workflows import MILTrainWorkflow
from wsi.components import TissueMasker
from wsi.reader import Slide

from ..bundles.helpers import REPO_ROOT, bundle_cmd, run_bundle

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
        "patch_size": 64, "level": None, "mpp": 1.0, "tissue_threshold": 0.5, "backend": "openslide",
        "reader_def": Slide, "masker_def": TissueMasker}  # the defaults, which tiling folds into its flat options
    assert wf.optimizer_def.func is torch.optim.Adam and wf.optimizer_def.keywords == {"weight_decay": 0.0}
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


# ---------------------------------------------------------------------------------------------------------------------
# config components (issue 16): head_def / encoder_def, evaluate with the recorded definitions, inference.json
# ---------------------------------------------------------------------------------------------------------------------
INFERENCE = "bundles/mil_slide_classification/configs/inference.json"
USER_HEADS = '''
from torch import nn

from mil.heads import MILHead, MILOutput, masked_mean, prepare_bags, zero_padding


class MeanHead(MILHead):
    """A user's head: instance MLP, mean of the instance logits over the bag."""

    def __init__(self, in_features, num_classes, hidden=16):
        super().__init__(in_features, num_classes)
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x, mask=None):
        x, mask = prepare_bags(x, mask, self.in_features)
        scores = self.net(x)
        return MILOutput(masked_mean(scores, mask, dim=1), zero_padding(scores, mask), {"mask": mask})
'''
# A small ConvNet encoder given as a definition (the registry's class, its own arguments).
ENCODER_DEF = ("{'_target_': 'monai_distill.networks.ConvNet', '_mode_': 'callable', 'width': 8, 'depth': 2, "
               "'norm': 'none'}")


def _run_in(cwd: Path, config: str, **overrides) -> None:
    """The bundle from the user's working directory (where their module lives), as they would type it."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(bundle_cmd(str(REPO_ROOT / config), **overrides), cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_user_head_and_encoder_definitions(train_bag_dir: Path, mil_tiling: Path, mil_cohort, tmp_path: Path
                                           ) -> None:
    """``--head_def#_target_`` names a head class of the user's module (with an argument of its own) and
    ``--encoder_def`` a network definition; evaluate.json rebuilds both from what model.pt records and reproduces the
    numbers; inference.json predicts a directory of unlabelled slides with them (predictions only, no labels)."""
    cohort_root, table = mil_cohort
    (tmp_path / "myheads.py").write_text(USER_HEADS)
    res = tmp_path / "train"
    _run_in(tmp_path, TRAIN, train_bags=train_bag_dir, test_slides=mil_tiling, test_split="test", output_dir=res,
            feature_cache=tmp_path / "cache", encoder_def=ENCODER_DEF,
            **{"head_def#_target_": "myheads.MeanHead", "head_def#hidden": 8}, **FAST)
    metrics = json.loads((res / "metrics.json").read_text())
    assert metrics["model"] == "myheads.MeanHead" and metrics["encoder"].startswith("convnet@")
    assert metrics["feature_dim"] > 0 and 0 <= metrics["auc"] <= 1 and 1 <= metrics["epochs"] <= 3
    state = torch.load(res / "model.pt", weights_only=True)
    assert state["head_def"] == {"_target_": "myheads.MeanHead", "hidden": 8}
    assert state["extra"]["encoder"]["definition"]["_target_"] == "monai_distill.networks.convnet.ConvNet"

    evaluated = tmp_path / "evaluate"
    _run_in(tmp_path, EVALUATE, checkpoint=res / "model.pt", test_slides=res / "test_bags", output_dir=evaluated,
            feature_cache=tmp_path / "cache", **{k: v for k, v in FAST.items() if k != "epochs"})
    again = json.loads((evaluated / "metrics.json").read_text())
    for key in ("model", "auc", "acc", "balanced_acc", "encoder"):
        assert again[key] == pytest.approx(metrics[key]), key
    assert pd.read_csv(evaluated / "predictions.csv").equals(pd.read_csv(res / "predictions.csv"))

    slides = tmp_path / "unlabelled"
    slides.mkdir()
    test = table[table.split == "test"]
    for sid, path in zip(test.slide_id, test.slide_path):
        source = Path(path) if Path(path).is_absolute() else cohort_root / path
        (slides / f"{sid}{source.suffix}").symlink_to(source)
    predicted = tmp_path / "inference"
    _run_in(tmp_path, INFERENCE, checkpoint=res / "model.pt", test_slides=slides, output_dir=predicted,
            feature_cache=tmp_path / "cache", **{k: v for k, v in FAST.items() if k != "epochs"})
    preds = pd.read_csv(predicted / "predictions.csv")
    assert sorted(preds.slide_id) == sorted(test.slide_id) and "label" not in preds.columns
    assert set(preds.columns) >= {"slide_id", "pred", "prob_0", "prob_1"}
    assert ((preds.prob_0 + preds.prob_1 - 1).abs() < 1e-4).all()
    # The slides, tiled on the fly like the training patches, get the probabilities the training run gave them.
    trained = pd.read_csv(res / "predictions.csv").set_index("slide_id").loc[preds.slide_id]
    assert preds.prob_1.to_numpy() == pytest.approx(trained.prob_1.to_numpy(), abs=1e-5)
    info = json.loads((predicted / "inference.json").read_text())
    assert info["status"] == "finished" and info["n_slides"] == len(test) and info["model"] == "myheads.MeanHead"
    assert not (predicted / "metrics.json").exists()


def test_registry_head_by_target(train_bag_dir: Path, mil_tiling: Path, feature_cache: Path, tmp_path: Path) -> None:
    """``--head_def#_target_ mil.heads.ABMIL`` (a project head by its class) with an argument of its own."""
    res = tmp_path / "abmil"
    run_bundle(TRAIN, train_bags=train_bag_dir, test_slides=mil_tiling, test_split="test", output_dir=res,
               feature_cache=feature_cache, **{"head_def#_target_": "mil.heads.ABMIL", "head_def#hidden_dim": 32},
               **FAST)
    metrics = json.loads((res / "metrics.json").read_text())
    assert metrics["model"] == "mil.heads.baselines.ABMIL" and 0 <= metrics["auc"] <= 1
    assert torch.load(res / "model.pt", weights_only=True)["head_def"]["hidden_dim"] == 32


def test_user_masker_tiles_the_held_out_slides(contract_runs: dict[str, Path], train_bag_dir: Path, mil_cohort,
                                               feature_cache: Path, tmp_path: Path) -> None:
    """``--masker_def#_target_`` (the wsi_tiling bundle's entry) tiles held-out slides given as a CSV: a masker of
    the user's that keeps the whole slide gives every grid patch, more than the default tissue mask keeps."""
    cohort_root, _ = mil_cohort
    (tmp_path / "mymask.py").write_text("import numpy as np\n\n\ndef everything(image):\n"
                                        "    return np.ones(image.shape[:2], dtype=bool)\n")
    res = tmp_path / "all_patches"
    _run_in(tmp_path, TRAIN, train_bags=train_bag_dir, test_slides=cohort_root / "cohort.csv", test_split="test",
            model="clam_sb", output_dir=res, feature_cache=feature_cache,
            **{"masker_def#_target_": "mymask.everything"}, **FAST)
    default = json.loads((contract_runs["clam_sb"] / "metrics.json").read_text())
    everything = json.loads((res / "metrics.json").read_text())
    assert everything["mean_test_bag_size"] > default["mean_test_bag_size"]
    tiling = json.loads((res / "test_bags" / "tiling" / "tiling_config.json").read_text())
    assert tiling["config"]["components"]["masker_def"] == {"_target_": "mymask.everything"}


def test_optimizer_by_target(train_bag_dir: Path, mil_tiling: Path, feature_cache: Path, tmp_path: Path) -> None:
    """``--optimizer_def#_target_ torch.optim.AdamW`` trains the head with AdamW (lr from ``--lr``, the default's
    weight decay) and records it; the default is recorded as Adam."""
    runs = {}
    for name, extra in (("adam", {}), ("adamw", {"optimizer_def#_target_": "torch.optim.AdamW"})):
        runs[name] = tmp_path / name
        run_bundle(TRAIN, train_bags=train_bag_dir, test_slides=mil_tiling, test_split="test", output_dir=runs[name],
                   feature_cache=feature_cache, model="abmil", lr=1e-3, **extra, **FAST)
    adam, adamw = (json.loads((runs[n] / "metrics.json").read_text()) for n in ("adam", "adamw"))
    assert adam["optimizer"] == "torch.optim.adam.Adam" and adamw["optimizer"] == "torch.optim.adamw.AdamW"
    assert 0 <= adamw["auc"] <= 1
    weights = [torch.load(runs[n] / "model.pt", weights_only=True)["state_dict"] for n in ("adam", "adamw")]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # another optimiser, other weights


@pytest.mark.parametrize(
    ("overrides", "culprit"),
    [
        ({"optimizer_def": {"_target_": "torch.nn.Linear", "_mode_": "callable"}},
         ("--optimizer_def torch.nn.modules.linear.Linear", "cannot build an optimiser")),
        ({"reader_def": {"_target_": "wsi.reader.Slide", "_mode_": "callable", "backend": "bogus"}},
         ("reader_def#backend", "bogus")),
        ({"head_def": {"_target_": "mil.heads.ABMIL", "_mode_": "callable", "num_classes": 3}},
         ("--head_def mil.heads.baselines.ABMIL", "logits of shape (1, 3)", "(1, 2)")),
        ({"head_def": {"_target_": "torch.nn.Identity", "_mode_": "callable"}},
         ("--head_def torch.nn.modules.linear.Identity", "without loss()", "MILHead")),
        ({"head_def": {"_target_": "mil.heads.ABMIL", "_mode_": "callable"}, "head_options": {"hidden_dim": 8}},
         ("--head_options", "--head_def#hidden_dim")),
    ],
    ids=["not-an-optimizer", "bad-reader", "wrong-class-count", "not-a-head", "head-options-with-a-definition"],
)
def test_bad_head_definition_ends_with_one_line(overrides: dict, culprit: tuple[str, ...], tmp_path: Path) -> None:
    from monai.bundle import run

    with pytest.raises(SystemExit) as exc:
        run(config_file=str(BUNDLE / "train.json"), train_bags=str(tmp_path / "bags"), test_slides=str(tmp_path),
            output_dir=str(tmp_path / "out"), device="cpu", progress=False, **overrides)
    last = str(exc.value.code)
    assert last.startswith("monai-distill: error: "), last
    for text in culprit:
        assert text in last, f"{text!r} not in: {last}"


def test_inference_config_predicts_with_the_mil_inference_workflow() -> None:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "inference.json"))
    assert parser["workflow"]["_target_"] == "mil.workflows.MILInferenceWorkflow"


def test_arguments_on_the_default_definitions_are_registry_options(tmp_path: Path) -> None:
    """``--head_def#hidden_dim`` / ``--encoder_def#width`` on the defaults stay the registry head and encoder with
    those options (what ``--head_options`` / ``--encoder_options`` say), so nothing is recorded as a definition."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "train.json"))
    parser.update({"train_bags": "bags", "test_slides": "t.csv", "output_dir": str(tmp_path), "model": "abmil",
                   "head_def#hidden_dim": 64, "encoder_def#width": 32, "device": "cpu"})
    wf = parser.get_parsed_content("workflow")()
    assert (wf.model, wf.head_def, wf.head_options) == ("abmil", None, {"hidden_dim": 64})
    assert wf.encoder.name == "resnetap10" and wf.encoder.options == {"width": 32, "norm": "none"}
    assert wf.encoder.definition is None
