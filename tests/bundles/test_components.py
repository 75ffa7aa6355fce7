"""Config components of the distillation bundles (issue 16): ``network_def``, ``eval_network_def`` and
``eval_optimizer_def`` replaced from the command line, on real BreastMNIST at tiny budgets.

Each run is ``python -m monai.bundle run`` as a user types it: a MONAI network that is not in the registry (with its
own arguments) through ``--network_def#_target_``, a network class of the user's own module in the working
directory, the flat ``--arch`` against an explicit definition of the same ConvNet (the same set and numbers), and the
bad definitions that must end with the project's one-line error.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from monai.networks.nets import Classifier

from monai_distill.checks import OptionError
from monai_distill.components import NETWORK_ARGUMENTS, as_factory, build_component, component_label
from monai_distill.data import SyntheticSet
from monai_distill.evaluation import protocol_optimizer

from .helpers import REPO_ROOT, bundle_cmd, run_bundle

TRAIN_2D = "bundles/medmnist2d_distillation/configs/train.json"
EVAL_2D = "bundles/medmnist2d_distillation/configs/evaluate.json"
# One evaluation network for 2 epochs, ConvNet width 8, one epoch of selection training: seconds per run.
TINY = {"eval_models": 1, "eval_epochs": 2, "preset_overrides": "{'width': 8, 'embed_epochs': 1}",
        "progress": False, "device": "cpu"}
# A MONAI DenseNet small enough for 28 px images: two dense blocks, 8 initial features, growth 4.
DENSENET = {"network_def#_target_": "monai.networks.nets.DenseNet", "network_def#block_config": "(2, 2)",
            "network_def#init_features": 8, "network_def#growth_rate": 4}
PREFIX = "monai-distill: error: "

USER_MODULE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """A user's network: embed + classifier, so that herding can use its features."""

    def __init__(self, in_channels, num_classes, hidden=4):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, x):
        return torch.relu(self.conv(x)).mean((2, 3))

    def forward(self, x):
        return self.classifier(self.embed(x))
'''


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _cli_error(config: str, cwd: Path = REPO_ROOT, **overrides) -> str:
    """Run the bundle as a user does and return the last stderr line of the failure."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(bundle_cmd(config, **overrides), cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode != 0, proc.stdout[-2000:]
    return proc.stderr.strip().splitlines()[-1]


def _run_in_process(config: str, **overrides) -> str:
    from monai.bundle import run

    with pytest.raises(SystemExit) as exc:
        run(config_file=config, **overrides)
    return str(exc.value.code)


def test_monai_network_by_target_distils_and_evaluates(medmnist_dir: Path, tmp_path: Path) -> None:
    """``--network_def#_target_ monai.networks.nets.DenseNet`` (not in the registry) with its own arguments: DC
    distils with it and the evaluation (defaulting to the method's network) trains it; evaluate.json then evaluates
    the set with another MONAI network and Adam, both by ``#_target_``."""
    out = tmp_path / "train"
    run_bundle(TRAIN_2D, dataset="breastmnist", dataset_dir=medmnist_dir, method="dc", ipc=2, seed=0,
               method_options="{'iterations': 1}", output_dir=out, **DENSENET, **TINY)
    m = _metrics(out)
    assert m["arch"].startswith("densenet@") and m["eval_arch"] == m["arch"] and m["iterations"] == 1
    assert m["config"]["network_def"] == {"_target_": "monai.networks.nets.densenet.DenseNet",
                                          "block_config": [2, 2], "growth_rate": 4, "init_features": 8}
    assert m["n_eval_models"] == 1 and 0.0 <= m["test_acc_mean"] <= 1.0 and 0.0 <= m["test_auc_mean"] <= 1.0
    syn = SyntheticSet.load(out / "synthetic.pt")
    assert syn.images.shape == (4, 1, 28, 28) and syn.meta["arch"] == m["arch"]
    assert syn.meta["network_def"]["_target_"] == "monai.networks.nets.densenet.DenseNet"

    evaluated = tmp_path / "evaluate"
    run_bundle(EVAL_2D, synthetic=out / "synthetic.pt", dataset_dir=medmnist_dir, output_dir=evaluated,
               **{"eval_network_def#_target_": "monai.networks.nets.Classifier",
                  "eval_network_def#channels": "[8, 16]", "eval_network_def#strides": "[2, 2]",
                  "eval_optimizer_def#_target_": "torch.optim.Adam", "eval_optimizer_def#lr": 0.001}, **TINY)
    e = _metrics(evaluated)
    assert e["arch"].startswith("classifier@") and e["eval_arch"] == e["arch"] and e["dataset"] == "breastmnist"
    assert e["eval_network_def"]["channels"] == [8, 16]
    assert e["eval_optimizer_def"] == {"_target_": "torch.optim.adam.Adam", "lr": 0.001}
    assert 0.0 <= e["test_acc_mean"] <= 1.0

    # The set records a label, not a registry name: evaluating it with the default network says what to do.
    last = _run_in_process(EVAL_2D, synthetic=str(out / "synthetic.pt"), dataset_dir=str(medmnist_dir),
                           output_dir=str(tmp_path / "no_arch"), progress=False, device="cpu")
    assert last.startswith(PREFIX) and "distilled with the network of network_def" in last
    assert "monai.networks.nets.densenet.DenseNet" in last and "--eval_network_def" in last


def test_user_network_class_from_the_working_directory(medmnist_dir: Path, tmp_path: Path) -> None:
    """A network class in the user's own module, importable from the current directory: ``#_target_`` plus an
    argument of its own; herding uses its ``embed`` and the data fills in its channels and classes."""
    (tmp_path / "tinynets.py").write_text(USER_MODULE)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = bundle_cmd(str(REPO_ROOT / TRAIN_2D), dataset="breastmnist", dataset_dir=medmnist_dir, method="herding",
                     ipc=2, output_dir=out, **{"network_def#_target_": "tinynets.TinyNet", "network_def#hidden": 6},
                     **TINY)
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _metrics(out)
    assert m["arch"].startswith("tinynet@") and m["config"]["network_def"] == {"_target_": "tinynets.TinyNet",
                                                                              "hidden": 6}
    assert m["method"] == "herding" and 0.0 <= m["test_balanced_acc_mean"] <= 1.0
    assert SyntheticSet.load(out / "synthetic.pt").images.shape == (4, 1, 28, 28)


USER_DATA = '''
from monai_distill.data import load_dataset


class EveryOther:
    """A user's data: BreastMNIST with every other training image, flipped left-right (a transform inside)."""

    def __init__(self, dataset_dir, stride=2):
        self.dataset_dir, self.stride = dataset_dir, stride

    def __call__(self, split):
        ds = load_dataset("breastmnist", split=split, dataset_dir=self.dataset_dir)
        if split == "train":
            ds.images, ds.labels = ds.images[:: self.stride].flip(-1), ds.labels[:: self.stride]
        return ds


def not_data(split):
    return [split]
'''


def test_user_dataset_definition_distils_evaluates_and_cards(medmnist_dir: Path, tmp_path: Path) -> None:
    """``--dataset_def#_target_`` names a user class (own arguments, a transform inside): the run reads its data,
    records the definition in the set, and ``evaluate.json`` reads the same data again from the set alone."""
    (tmp_path / "mydata.py").write_text(USER_DATA)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    user = {"dataset_def#_target_": "mydata.EveryOther", "dataset_def#dataset_dir": str(medmnist_dir)}
    cmd = bundle_cmd(str(REPO_ROOT / TRAIN_2D), method="random", ipc=2, output_dir=out, **user, **TINY)
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _metrics(out)
    assert m["dataset"] == "breastmnist" and m["data"]["n_images"] == 273  # 546 / 2
    assert m["config"]["dataset"].startswith("everyother@")
    assert m["config"]["dataset_def"]["_target_"] == "mydata.EveryOther"
    syn = SyntheticSet.load(out / "synthetic.pt")
    assert syn.meta["dataset_def"]["dataset_dir"] == str(medmnist_dir) and syn.meta["dataset_ref"] is None
    cmd = bundle_cmd(str(REPO_ROOT / EVAL_2D), synthetic=out / "synthetic.pt", output_dir=tmp_path / "ev", **TINY)
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _metrics(tmp_path / "ev")["dataset"] == "breastmnist"
    last = _cli_error(str(REPO_ROOT / TRAIN_2D), cwd=tmp_path, method="random", ipc=2, output_dir=tmp_path / "bad",
                      **{"dataset_def#_target_": "mydata.not_data"}, **TINY)
    assert last.startswith(PREFIX) and "dataset_def" in last and "RealDataset" in last


USER_METHOD = '''
import torch

from monai_distill.methods.coresets import HerdingCoreset


class LastHerding(HerdingCoreset):
    """A user's method: herding's selection in reverse order, with an option of its own (``keep``, recorded)."""

    name = "last_herding"

    def select(self):
        return super().select().flip(0)


class NotAMethod:
    pass
'''

USER_WRITER = '''
import numpy as np

from monai_distill.components import SetWriter


class NpyWriter(SetWriter):
    """Also writes the images as a .npy file."""

    def __init__(self, name="images.npy"):
        self.name = name

    def __call__(self, syn, output_dir):
        np.save(f"{output_dir}/{self.name}", syn.images.numpy())
        return super().__call__(syn, output_dir)


def forgetful(syn, output_dir):
    return []
'''


def test_user_method_definition(medmnist_dir: Path, tmp_path: Path) -> None:
    """``--method_def#_target_`` names a Distiller subclass of the user's: it runs under its own name, its
    definition's arguments are method options, and a class that is no Distiller ends with one line."""
    (tmp_path / "mymethods.py").write_text(USER_METHOD)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    cmd = bundle_cmd(str(REPO_ROOT / TRAIN_2D), dataset="breastmnist", dataset_dir=medmnist_dir, ipc=2,
                     output_dir=out, card=False, **{"method_def#_target_": "mymethods.LastHerding",
                                                    "method_def#keep": 2}, **TINY)
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _metrics(out)
    assert m["method"] == "last_herding" and m["config"]["method_options"]["keep"] == 2
    assert m["config"]["method_def"] == {"_target_": "mymethods.LastHerding", "keep": 2}
    assert SyntheticSet.load(out / "synthetic.pt").meta["method"] == "last_herding"
    last = _cli_error(str(REPO_ROOT / TRAIN_2D), cwd=tmp_path, dataset="breastmnist", dataset_dir=medmnist_dir,
                      ipc=2, output_dir=tmp_path / "bad", **{"method_def#_target_": "mymethods.NotAMethod"}, **TINY)
    assert last.startswith(PREFIX) and "method_def" in last and "Distiller" in last


def test_user_writer_definition(medmnist_dir: Path, tmp_path: Path) -> None:
    """``--writer_def#_target_`` names a SetWriter subclass with an argument: it adds its file beside the set; a
    writer that saves no synthetic.pt ends with one line."""
    (tmp_path / "mywriters.py").write_text(USER_WRITER)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    cmd = bundle_cmd(str(REPO_ROOT / TRAIN_2D), dataset="breastmnist", dataset_dir=medmnist_dir, method="random",
                     ipc=2, output_dir=out, card=False, **{"writer_def#_target_": "mywriters.NpyWriter",
                                                           "writer_def#name": "set.npy"}, **TINY)
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import numpy as np

    assert np.load(out / "set.npy").shape == (4, 1, 28, 28) and (out / "synthetic.pt").is_file()
    assert _metrics(out)["config"]["writer_def"] == {"_target_": "mywriters.NpyWriter", "name": "set.npy"}
    last = _cli_error(str(REPO_ROOT / TRAIN_2D), cwd=tmp_path, dataset="breastmnist", dataset_dir=medmnist_dir,
                      method="random", ipc=2, output_dir=tmp_path / "bad", card=False,
                      **{"writer_def#_target_": "mywriters.forgetful"}, **TINY)
    assert last.startswith(PREFIX) and "writer_def" in last and "synthetic.pt" in last


USER_PROTOCOL = '''
from monai_distill.evaluation import EvaluationProtocol


class CountingProtocol(EvaluationProtocol):
    """The default protocol that also writes how many images each evaluation trained on."""

    def evaluate(self, images, labels, test, *args, **kwargs):
        with open("protocol_calls.txt", "a") as f:
            f.write(f"{len(images)} {self.models}\\n")
        return super().evaluate(images, labels, test, *args, **kwargs)


class NotAProtocol:
    def __init__(self, **fields):
        self.fields = fields
'''


def test_user_evaluation_protocol(medmnist_dir: Path, tmp_path: Path) -> None:
    """``--evaluation_def#_target_`` names an EvaluationProtocol subclass of the user's: it evaluates the set (its
    fields still come from the flat entries unless set), the run records it, and an object that is no protocol ends
    with one line."""
    (tmp_path / "myprotocols.py").write_text(USER_PROTOCOL)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    cmd = bundle_cmd(str(REPO_ROOT / TRAIN_2D), dataset="breastmnist", dataset_dir=medmnist_dir, method="random",
                     ipc=2, output_dir=out, card=False, **{"evaluation_def#_target_": "myprotocols.CountingProtocol"},
                     **{**TINY, "eval_models": 2})
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "protocol_calls.txt").read_text().split() == ["4", "2"]  # 2 classes x ipc 2; K from the flag
    m = _metrics(out)
    assert m["n_eval_models"] == 2 and m["config"]["evaluation_def"] == {"_target_": "myprotocols.CountingProtocol"}
    last = _cli_error(str(REPO_ROOT / TRAIN_2D), cwd=tmp_path, dataset="breastmnist", dataset_dir=medmnist_dir,
                      method="random", ipc=2, output_dir=tmp_path / "bad", card=False,
                      **{"evaluation_def#_target_": "myprotocols.NotAProtocol"}, **TINY)
    assert last.startswith(PREFIX) and "evaluation_def" in last and "EvaluationProtocol" in last


def test_evaluation_protocol_field_overrides_the_flat_entry(medmnist_dir: Path, tmp_path: Path) -> None:
    """``--evaluation_def#models 1`` sets K through the protocol entry, over the flat ``--eval_models``."""
    out = tmp_path / "out"
    run_bundle(TRAIN_2D, dataset="breastmnist", dataset_dir=medmnist_dir, method="random", ipc=2, output_dir=out,
               card=False, **{**TINY, "eval_models": 3}, **{"evaluation_def#models": 1})
    assert _metrics(out)["n_eval_models"] == 1


def test_flat_arch_equals_an_explicit_definition_of_the_same_network(medmnist_dir: Path, tmp_path: Path) -> None:
    """``--arch convnet`` (the flat shortcut, as before the components existed) and a ``network_def`` naming the
    registry's ConvNet with the preset's settings give the same synthetic set and the same test numbers (CPU, same
    seed): the components route to the one network factory, without changing the random stream."""
    flat, defined = tmp_path / "flat", tmp_path / "defined"
    common = {"dataset": "breastmnist", "dataset_dir": medmnist_dir, "method": "herding", "ipc": 2, "seed": 3, **TINY}
    run_bundle(TRAIN_2D, arch="convnet", output_dir=flat, **common)
    run_bundle(TRAIN_2D, output_dir=defined, **common,
               network_def="{'_target_': 'monai_distill.networks.ConvNet', '_mode_': 'callable', 'width': 8, "
                           "'depth': 3, 'norm': 'instance'}")
    a, b = SyntheticSet.load(flat / "synthetic.pt"), SyntheticSet.load(defined / "synthetic.pt")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.lr == b.lr
    assert a.meta["indices"] == b.meta["indices"]
    assert a.meta["arch"] == "convnet" and "network_def" not in a.meta and b.meta["arch"].startswith("convnet@")
    ma, mb = _metrics(flat), _metrics(defined)
    assert ma["per_model"] == mb["per_model"] and ma["eval_arch"] == "convnet"
    assert "network_def" not in ma["config"] and "eval_optimizer_def" not in ma["config"]


# Sums of the synthetic images that the code *before* the components (commit 0b308da^) wrote for these commands
# (BreastMNIST ipc 2, seed 3, one torch thread, CPU); the current code wrote the same bytes (sha256 of the images
# 23beb702d2f43261 for dm, 213ac092dcb7af3f for dc) when this test was added.
_BEFORE_COMPONENTS = {"dm": (500.4850945393555, 2735.722508310806), "dc": (524.4548076943029, 2694.7670719542075)}


@pytest.mark.parametrize("method", sorted(_BEFORE_COMPONENTS))
def test_flat_shortcuts_give_the_set_of_the_code_before_the_components(method: str, medmnist_dir: Path,
                                                                        tmp_path: Path) -> None:
    """The flat flags (``--arch``, ``--eval_models``, ...) distil the same set as before the config components
    existed: a method that trains its networks (dm: random embedding networks, dc: gradient matching)."""
    out = tmp_path / method
    run_bundle(TRAIN_2D, dataset="breastmnist", dataset_dir=medmnist_dir, method=method, ipc=2, seed=3, output_dir=out,
               num_threads=1, card=False, method_options=f"{{'iterations': {5 if method == 'dm' else 2}}}", **TINY)
    images = SyntheticSet.load(out / "synthetic.pt").images.double()
    total, absolute = _BEFORE_COMPONENTS[method]
    # a relative 1e-6: the same random stream and arithmetic; a changed stream moves these sums by whole units
    assert float(images.sum()) == pytest.approx(total, rel=1e-6)
    assert float(images.abs().sum()) == pytest.approx(absolute, rel=1e-6)


@pytest.mark.parametrize(
    ("overrides", "culprit"),
    [
        ({"network_def": {"_target_": "monai.networks.nets.Classifier", "_mode_": "callable", "channels": [8],
                          "strides": [2], "classes": 3}},
         ("--network_def monai.networks.nets.classifier.Classifier", "returned shape (2, 3)", "num_classes=2")),
        ({"network_def": {"_target_": "monai.networks.nets.Classifier", "_mode_": "callable", "channels": [8],
                          "strides": [2]}, "method": "herding"},
         ("--method herding uses the network's embed(x)", "monai.networks.nets.classifier.Classifier")),
        ({"network_def": "tinynets_missing.Net"}, ("--network_def", "cannot import 'tinynets_missing.Net'")),
        ({"eval_optimizer_def": {"_target_": "torch.nn.Linear", "_mode_": "callable"}},
         ("--eval_optimizer_def torch.nn.modules.linear.Linear", "cannot build an optimiser")),
    ],
    ids=["wrong-class-count", "herding-without-embed", "dotted-path-not-importable", "optimizer-not-an-optimizer"],
)
def test_bad_definition_ends_with_one_line(overrides: dict, culprit: tuple[str, ...], medmnist_dir: Path,
                                          tmp_path: Path) -> None:
    out = tmp_path / "out"
    last = _run_in_process(TRAIN_2D, **{"dataset": "breastmnist", "dataset_dir": str(medmnist_dir), "method": "dc",
                                        "ipc": 2, "method_options": {"iterations": 1}, "output_dir": str(out),
                                        **TINY, "preset_overrides": {"width": 8}, **overrides})
    assert last.startswith(PREFIX), last
    for text in culprit:
        assert text in last, f"{text!r} not in: {last}"
    assert not (out / "synthetic.pt").exists() and not (out / "metrics.json").exists()


def test_target_that_cannot_be_imported_ends_with_one_line(medmnist_dir: Path, tmp_path: Path) -> None:
    """MONAI resolves ``_target_`` before the workflow exists; the bundle still ends with the project's line."""
    out = tmp_path / "out"
    last = _cli_error(TRAIN_2D, dataset="breastmnist", dataset_dir=medmnist_dir, method="random", ipc=2,
                      output_dir=out, **{"network_def#_target_": "no_such_module.Net"}, **TINY)
    assert last.startswith(PREFIX + "config entry 'network_def': ModuleNotFoundError"), last
    assert "'no_such_module.Net'" in last and "PYTHONPATH" in last
    assert not out.exists()


def test_definition_helpers() -> None:
    """Data arguments are filled only where the definition leaves them unset; labels are stable; optimisers get the
    protocol's lr unless they set one."""
    factory = as_factory({"_target_": "monai.networks.nets.Classifier", "channels": [4], "strides": [2]}, "x")
    net = build_component(factory, "x", {"in_shape": (1, 8, 8), "classes": 3, "in_channels": 1})
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    fixed = functools.partial(Classifier, in_shape=(1, 8, 8), classes=5, channels=[4], strides=[2])
    assert build_component(fixed, "x", {"in_shape": (1, 8, 8), "classes": 3})(torch.zeros(1, 1, 8, 8)).shape == (1, 5)
    assert component_label(factory) == component_label(as_factory(
        {"_target_": "monai.networks.nets.Classifier", "strides": [2], "channels": [4]}, "x"))
    assert {"spatial_dims", "in_channels", "num_classes", "out_channels"} <= set(NETWORK_ARGUMENTS)
    lin = torch.nn.Linear(2, 2)
    assert protocol_optimizer(functools.partial(torch.optim.Adam), 0.03, lin).param_groups[0]["lr"] == 0.03
    assert protocol_optimizer(functools.partial(torch.optim.SGD, lr=0.5), 0.03, lin).param_groups[0]["lr"] == 0.5
    with pytest.raises(OptionError, match="fresh one is needed"):
        as_factory(lin, "network_def")


_DISTILL_DEFS = ("network_def", "eval_network_def", "eval_optimizer_def")
_MEDMNIST_DEFS = (*_DISTILL_DEFS, "dataset_def", "method_def", "writer_def")
_WSI_DEFS = ("reader_def", "masker_def", "grid_def", "writer_def")


@pytest.mark.parametrize(("bundle", "definitions"), [
    ("medmnist2d_distillation", _MEDMNIST_DEFS), ("organmnist3d_distillation", _MEDMNIST_DEFS),
    ("histodd_patches", (*_DISTILL_DEFS, "method_def", "writer_def")),
    ("mil_slide_classification", ("head_def", "encoder_def", "optimizer_def", "reader_def", "masker_def")),
    ("wsi_tiling", _WSI_DEFS), ("wsi_synthetic_bags", _WSI_DEFS),
])
def test_every_component_entry_is_documented(bundle: str, definitions: tuple[str, ...]) -> None:
    """Each bundle's README lists every top-level entry of its configs under "Entries you can override", with one
    example command per ``*_def`` entry."""
    from monai.bundle import ConfigParser

    readme = (REPO_ROOT / "bundles" / bundle / "docs" / "README.md").read_text()
    assert "## Entries you can override" in readme
    section = readme.split("## Entries you can override", 1)[1]
    skip = {"imports", "initialize", "run", "finalize", "bundle_root", "_meta_"}
    for config in (REPO_ROOT / "bundles" / bundle / "configs").glob("*.json"):
        if config.name == "metadata.json":
            continue
        parser = ConfigParser()
        parser.read_config(str(config))
        for key in set(parser.config) - skip:
            assert f"`{key}`" in section, f"{config.name}: `{key}` not listed in {bundle}/docs/README.md"
    for entry in definitions:
        assert f"--{entry}" in section, f"no example command for {entry}"
