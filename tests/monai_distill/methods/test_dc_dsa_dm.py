"""DC, DSA and DM on real BreastMNIST (and AdrenalMNIST3D): gradient distances, falling matching losses, resume."""

from __future__ import annotations

import pytest
import torch

from monai_distill.data import load_medmnist
from monai_distill.methods import GRADIENT_DISTANCES, DistillConfig, get_method, gradient_distance
from monai_distill.methods.gradient_matching import DC_LOOPS
from monai_distill.methods.matching import class_gradient_match
from monai_distill.presets import get_preset

CPU = torch.device("cpu")
# Small loops so that each method makes ~80 synthetic updates in a few seconds on one core.
OPTIONS = {
    "dc": {"iterations": 20, "outer_loop": 4, "inner_loop": 2, "batch_real": 32},
    "dsa": {"iterations": 20, "outer_loop": 4, "inner_loop": 2, "batch_real": 32},
    "dm": {"iterations": 30, "batch_real": 64},
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def breast(medmnist_dir):
    return load_medmnist("breastmnist", "train", medmnist_dir)


def make(name, real, ipc=5, seed=0, width=16, **options):
    cfg = DistillConfig(ipc=ipc, arch="convnet", preset=get_preset("quick", real.spatial_dims, width=width),
                        seed=seed, options={**OPTIONS[name], **options})
    d = get_method(name)(real, cfg, CPU)
    d.init_synthetic()
    return d


def probe_nets(d, n=3):
    nets = []
    for s in range(n):
        torch.manual_seed(1000 + s)
        nets.append(d.net_factory())
    return nets


def test_dc_distance_is_per_unit_one_minus_cosine():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, 3, 3, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    rows_a, rows_b = a.reshape(4, -1), b.reshape(4, -1)
    expected = sum(1 - torch.dot(rows_a[i], rows_b[i]) / (rows_a[i].norm() * rows_b[i].norm()) for i in range(4))
    dc = GRADIENT_DISTANCES.get("dc")
    assert torch.allclose(dc(a, b), expected, atol=1e-5)
    assert dc(a, a).abs() < 1e-5 and dc(torch.ones(3), torch.zeros(3)) == 0  # biases ignored (DC Eq. 10)
    assert torch.allclose(GRADIENT_DISTANCES.get("l1_mean")(a, b), (a - b).abs().mean())
    assert torch.allclose(gradient_distance([a, a[0, 0, 0]], [b, b[0, 0, 0]], "l1"), (a - b).abs().sum() +
                          (a[0, 0, 0] - b[0, 0, 0]).abs().sum())
    with pytest.raises(KeyError, match="valid names: cosine, dc, l1, l1_mean, mse"):
        GRADIENT_DISTANCES.get("l2")


def test_class_gradient_match_reaches_the_synthetic_images(breast):
    d = make("dc", breast)
    net = probe_nets(d, 1)[0]
    syn = d.class_images(1).detach().clone().requires_grad_(True)
    loss = class_gradient_match(net, breast.images[breast.labels == 1][:32], syn, 1, "dc")
    (g,) = torch.autograd.grad(loss, syn)
    assert torch.isfinite(loss) and loss > 0 and g.abs().sum() > 0
    # Matching a real batch against itself gives zero distance (up to float32 rounding of the two passes).
    real = breast.images[breast.labels == 1][:8]
    other = breast.images[breast.labels == 1][8:16]
    assert class_gradient_match(net, real, real, 1, "l1") < 1e-4 * class_gradient_match(net, real, other, 1, "l1")


@pytest.mark.parametrize("name", ["dc", "dsa", "dm"])
def test_matching_loss_is_finite_and_falls_on_breastmnist(name, breast):
    d = make(name, breast)
    start = d.images.detach().clone()
    nets = probe_nets(d)
    before = d.monitor_loss(nets, seed=7)
    logs = [d.step(it) for it in range(d.num_iterations)]
    after = d.monitor_loss(nets, seed=7)
    assert all(torch.isfinite(torch.tensor(list(log.values()))).all() for log in logs)
    assert after < 0.9 * before, (before, after)  # on networks and real batches the method never saw
    syn = d.synthetic_set()
    assert syn.images.shape == (10, 1, 28, 28) and syn.labels.tolist() == [0] * 5 + [1] * 5
    assert not torch.equal(syn.images, start)
    # Real-sample init: the random coreset of the same seed is the starting point.
    rnd = get_method("random")(breast, d.cfg, CPU).select()
    assert syn.meta["init_indices"] == rnd.tolist() and torch.equal(start, breast.images[rnd])
    assert syn.meta["method"] == name and syn.meta["options"]["iterations"] == OPTIONS[name]["iterations"]


@pytest.mark.parametrize("name", ["dsa", "dm"])
def test_resume_is_bit_for_bit(name, breast):
    opts = {"iterations": 4, "outer_loop": 2, "inner_loop": 1} if name != "dm" else {"iterations": 4}
    a = make(name, breast, **opts)
    for it in range(2):
        a.step(it)
    state = a.state_dict()
    for it in range(2, 4):
        a.step(it)
    b = make(name, breast, **opts)
    b.load_state_dict(state)
    assert b.iteration == 2
    for it in range(2, 4):
        b.step(it)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.generator.get_state(), b.generator.get_state())
    with pytest.raises(ValueError, match="not 'dc'"):
        make("dc", breast).load_state_dict(state)


def test_3d_dc_and_dm_on_adrenal(medmnist_dir):
    real = load_medmnist("adrenalmnist3d", "train", medmnist_dir)
    for name in ("dc", "dm"):
        d = make(name, real, ipc=2, width=4, iterations=2, batch_real=8, **({"outer_loop": 2, "inner_loop": 1}
                                                                           if name == "dc" else {}))
        logs = [d.step(it) for it in range(2)]
        assert all(torch.isfinite(torch.tensor(v)) for log in logs for v in log.values())
        assert d.synthetic_set().images.shape == (4, 1, 28, 28, 28)


def test_options_defaults_and_errors(breast):
    def cfg(ipc, preset="paper", **options):
        return DistillConfig(ipc=ipc, preset=get_preset(preset, 2, width=8), options=options)

    dc = get_method("dc")(breast, cfg(10), CPU)
    assert (dc.options["outer_loop"], dc.options["inner_loop"]) == DC_LOOPS[10]
    assert dc.options["lr_img"] == 0.1 and dc.options["distance"] == "dc" and not dc.options["dsa"]
    assert get_method("dsa")(breast, cfg(50), CPU).options["dsa"] is True
    dm = get_method("dm")(breast, cfg(10), CPU)
    assert (dm.num_iterations, dm.options["lr_img"], dm.options["batch_real"]) == (20000, 1.0, 256)
    # CLI values arrive as strings; they are cast to the default's type.
    assert get_method("dc")(breast, cfg(1, lr_img="0.5", dsa="true"), CPU).options == {
        **get_method("dc")(breast, cfg(1), CPU).options, "lr_img": 0.5, "dsa": True}
    with pytest.raises(KeyError, match=r"unknown dc option.*valid options: .*lr_img"):
        get_method("dc")(breast, cfg(10, lr_image=1), CPU)
    with pytest.raises(KeyError, match="unknown gradient distance 'l3'"):
        get_method("dc")(breast, cfg(10, distance="l3"), CPU)
    with pytest.raises(ValueError, match="init must be 'real' or 'noise'"):
        get_method("dm")(breast, cfg(10, init="kmeans"), CPU)
    d = make("dc", breast, lr_img=1e30, iterations=1)
    with pytest.raises(FloatingPointError, match="lower lr_img"):
        for it in range(3):
            d.step(it)


# ---------------------------------------------------------------------- through the foundation bundles
TINY = {
    "dc": "{'iterations': 3, 'outer_loop': 2, 'inner_loop': 1, 'batch_real': 16}",
    "dsa": "{'iterations': 3, 'outer_loop': 2, 'inner_loop': 1, 'batch_real': 16}",
    "dm": "{'iterations': 5, 'batch_real': 16}",
}


def test_contract_command_2d(medmnist_dir, tmp_path, monkeypatch):
    """The literal contract: ``python -m monai.bundle run --config_file .../train.json --method dc`` on BreastMNIST."""
    import json

    from monai_distill.data import SyntheticSet
    from tests.bundles.helpers import FAST, run_bundle

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny networks; two threads only contend on a loaded machine
    out = tmp_path / "out"
    run_bundle("bundles/medmnist2d_distillation/configs/train.json", dataset="breastmnist", dataset_dir=medmnist_dir,
               method="dc", ipc=2, preset="quick", seed=0, output_dir=out, method_options=TINY["dc"], **FAST)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["method"], metrics["dataset"], metrics["ipc"]) == ("dc", "breastmnist", 2)
    assert 0.0 <= metrics["test_acc_mean"] <= 1.0
    syn = SyntheticSet.load(out / "synthetic.pt")
    assert syn.images.shape == (4, 1, 28, 28) and torch.isfinite(syn.images).all()
    assert syn.meta["options"]["iterations"] == 3 and syn.meta["options"]["outer_loop"] == 2


@pytest.mark.parametrize(
    ("name", "bundle", "dataset", "shape"),
    [
        ("dsa", "medmnist2d_distillation", "breastmnist", (4, 1, 28, 28)),
        ("dm", "medmnist2d_distillation", "breastmnist", (4, 1, 28, 28)),
        ("dc", "organmnist3d_distillation", "adrenalmnist3d", (4, 1, 28, 28, 28)),
        ("dsa", "organmnist3d_distillation", "adrenalmnist3d", (4, 1, 28, 28, 28)),
        ("dm", "organmnist3d_distillation", "adrenalmnist3d", (4, 1, 28, 28, 28)),
    ],
)
def test_bundles_in_process(name, bundle, dataset, shape, medmnist_dir, tmp_path, repo_root):
    """The 2D and 3D bundles through ``monai.bundle.run`` in-process (the code path of the command line)."""
    import json

    from monai.bundle import run

    from monai_distill.data import SyntheticSet

    out = tmp_path / "out"
    run(config_file=str(repo_root / f"bundles/{bundle}/configs/train.json"), dataset=dataset,
        dataset_dir=str(medmnist_dir), method=name, ipc=2, output_dir=str(out), eval_models=1, eval_epochs=2,
        preset_overrides={"width": 4}, method_options=eval(TINY[name]), progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == name and metrics["dataset"] == dataset and 0.0 <= metrics["test_acc_mean"] <= 1.0
    syn = SyntheticSet.load(out / "synthetic.pt")
    assert syn.images.shape == shape and syn.meta["method"] == name
