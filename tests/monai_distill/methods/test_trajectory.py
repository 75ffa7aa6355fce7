"""Trajectory matching on real MedMNIST: functional forward, expert buffers, the shared loop and every method."""

from __future__ import annotations

import math

import pytest
import torch

from monai_distill.data import load_medmnist
from monai_distill.methods import BufferSettings, DivergenceError, ExpertBuffer, FunctionalNet, flat_parameters
from monai_distill.methods.hoptm import masked_distance, shape_potential
from monai_distill.methods.trajectory import normalised_distance
from monai_distill.networks import get_network
from monai_distill.presets import get_preset

from .trajectory_helpers import CPU, distiller, real_subset

METHODS = ["mtt", "ftd", "datm", "ptm", "hoptm"]


@pytest.fixture(scope="module")
def breast(medmnist_dir):
    return load_medmnist("breastmnist", "train", medmnist_dir)


@pytest.fixture(scope="module")
def adrenal(medmnist_dir):
    return real_subset(load_medmnist("adrenalmnist3d", "train", medmnist_dir), 24)


@pytest.fixture(scope="module")
def buffers(tmp_path_factory):
    return tmp_path_factory.mktemp("buffers")


@pytest.mark.parametrize("dims", [2, 3])
def test_functional_forward_equals_the_module(dims):
    torch.manual_seed(0)
    net = get_network("convnet", dims, 1, 3, 16, width=8)
    f = FunctionalNet(net)
    x = torch.randn(2, 1, *([16] * dims))
    flat = flat_parameters(net)
    assert flat.numel() == f.num_params == sum(p.numel() for p in net.parameters())
    assert torch.allclose(f(flat, x), net(x), atol=1e-6)
    assert torch.allclose(f.embed(flat, x), net.embed(x), atol=1e-6)
    # A different vector gives different logits (the parameters really come from the vector).
    assert not torch.allclose(f(flat + 0.1, x), net(x))


def test_normalised_distance_by_hand():
    start, target = torch.tensor([0.0, 0.0, 0.0]), torch.tensor([1.0, 2.0, 2.0])  # ||start - target||^2 = 9
    student = torch.tensor([1.0, 2.0, 5.0])  # ||student - target||^2 = 9
    assert normalised_distance(student, start, target).item() == pytest.approx(1.0)
    assert normalised_distance(target, start, target).item() == 0.0
    with pytest.raises(DivergenceError, match="zero length"):
        normalised_distance(student, target, target)


def test_snapshots_copy_the_weights():
    net = torch.nn.Linear(3, 2)
    snap = flat_parameters(net)
    with torch.no_grad():
        net.weight.add_(1.0)
    assert not torch.equal(snap, flat_parameters(net))  # a CPU snapshot must not alias the live weights


@pytest.mark.parametrize("flat", [False, True])
def test_expert_buffer_snapshots_files_and_resume(flat, breast, tmp_path):
    preset = get_preset("quick", 2, width=8)
    settings = BufferSettings(num_experts=2, epochs=2, batch=128, flat=flat)
    factory = lambda: get_network("convnet", 2, 1, 2, 28, width=8)  # noqa: E731
    spec = {"dataset": "breastmnist", "width": 8}
    buf = ExpertBuffer(ExpertBuffer.directory_for(tmp_path, spec, settings), spec)
    assert buf.build(breast, factory, settings, preset, CPU, progress=False) == [0, 1]
    assert ("flat" in buf.directory.name) == flat
    traj = buf.load(settings).trajectory(0)
    assert traj.shape == (3, buf.num_params)
    for e in range(2):
        assert not torch.equal(traj[e], traj[e + 1]), "consecutive snapshots must differ"
    assert not torch.equal(traj, buf.trajectory(1))
    assert not list(buf.directory.glob("*.tmp")) and not list(buf.directory.glob(".*.tmp"))
    # An interrupted build resumes at the missing expert only.
    buf.path(1).unlink()
    assert buf.build(breast, factory, settings, preset, CPU, progress=False) == [1]
    assert torch.equal(torch.load(buf.path(0), weights_only=True)["params"], traj)


def test_balanced_experts_see_every_class_equally_often_and_keep_plain_buffers_where_they_were(breast, tmp_path):
    from monai_distill.evaluation import train_network
    from monai_distill.methods import balanced_weights

    plain, balanced = BufferSettings(), BufferSettings(balanced=True)
    assert "balanced" not in plain.identity()  # buffers built before the option keep their directory
    spec = {"dataset": "breastmnist", "width": 8}
    assert ExpertBuffer.directory_for(tmp_path, spec, plain) != ExpertBuffer.directory_for(tmp_path, spec, balanced)
    counts = torch.bincount(breast.labels)
    assert counts[0] * 2 < counts[1]  # BreastMNIST's train split: 147 malignant, 399 benign/normal
    drawn: list[torch.Tensor] = []
    net = get_network("convnet", 2, 1, 2, 28, width=8)
    train_network(net, breast.images, breast.labels, 4, 0.01, get_preset("quick", 2, width=8),
                  torch.Generator().manual_seed(0), CPU, batch_size=128, decay_lr=False,
                  sample_weights=balanced_weights(breast.labels), on_batch=lambda idx, *_: drawn.append(idx))
    share = (breast.labels[torch.cat(drawn)] == 0).float().mean().item()
    assert len(torch.cat(drawn)) == 4 * len(breast) and 0.45 < share < 0.55  # a 27 % class drawn half the time
    with pytest.raises(ValueError, match="one weight per image"):
        train_network(net, breast.images, breast.labels, 1, 0.01, get_preset("quick", 2, width=8),
                      torch.Generator(), CPU, sample_weights=torch.ones(3))


def test_buffer_settings_and_options_are_checked(breast, buffers):
    with pytest.raises(KeyError, match="valid"):
        BufferSettings.from_dict({"experts": 3})
    with pytest.raises(KeyError, match=r"unknown option.*'mtt'"):
        distiller("mtt", breast, buffers, init=False, syn_step=3)
    with pytest.raises(ValueError, match=r"buffers\.epochs"):
        distiller("mtt", breast, buffers, init=False, max_start_epoch=5)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_in_2d(method, breast, buffers):
    d = distiller(method, breast, buffers)
    first = d.images.detach().clone()
    logs = [d.step(it) for it in range(d.num_iterations)]
    assert all(math.isfinite(v) for row in logs for v in row.values())
    assert all(row["lr"] > 0 for row in logs)
    syn = d.synthetic_set()
    assert syn.images.shape == (4, 1, 28, 28) and syn.lr > 0
    assert not torch.equal(syn.images, first)  # the images were learned
    assert syn.meta["method"] == method and syn.meta["iterations"] == 6
    if method == "datm":
        assert syn.soft and torch.allclose(syn.labels.sum(1), torch.ones(4))
    else:
        assert syn.labels.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_in_3d(method, adrenal, buffers):
    d = distiller(method, adrenal, buffers, num_iterations=2, syn_steps=2)
    logs = [d.step(it) for it in range(2)]
    assert all(math.isfinite(row["loss"]) for row in logs)
    assert d.synthetic_set().images.shape == (4, 1, 28, 28, 28)


def test_datm_soft_labels_start_at_the_true_class(breast, buffers):
    d = distiller("datm", breast, buffers)
    assert torch.equal(d.final_labels().argmax(1), d.labels)
    assert 0 <= d.upper_bound(0) <= d.upper_bound(5) <= d.opts.max_start_epoch


def test_learned_lr_stays_positive(breast, buffers):
    d = distiller("mtt", breast, buffers, lr_lr=50.0, num_iterations=4)
    lrs = [d.step(it)["lr"] for it in range(4)]
    lo, hi = (math.exp(b) for b in d.lr_raw_bounds)
    assert all(0.999 * lo <= lr <= 1.001 * hi for lr in lrs)  # float32 exp(log)
    lr0 = d.buffer_settings.lr
    assert (lo, hi) == pytest.approx((0.2 * lr0, 5.0 * lr0))  # bounded relative to its start: no collapse
    assert min(lrs) == pytest.approx(lo, rel=1e-3) or max(lrs) == pytest.approx(hi, rel=1e-3)
    d = distiller("mtt", breast, buffers, num_iterations=3)
    assert len({d.step(it)["lr"] for it in range(3)}) == 3  # with the normal step it is learned


def test_linear_lr_parameterisation_steps_the_lr_itself_within_bounds(breast, buffers):
    d = distiller("mtt", breast, buffers, lr_param="linear", lr_lr=1e-5, num_iterations=3)
    lr0 = d.buffer_settings.lr
    assert float(d.lr_raw) == pytest.approx(lr0)  # the parameter is the lr, not its log
    lrs = [d.step(it)["lr"] for it in range(3)]
    assert len(set(lrs)) == 3 and all(0.2 * lr0 - 1e-9 <= lr <= 5 * lr0 + 1e-9 for lr in lrs)
    with pytest.raises(ValueError, match="lr_param"):
        distiller("mtt", breast, buffers, lr_param="cubic")


def test_nan_loss_names_method_iteration_and_term(breast, buffers, monkeypatch):
    d = distiller("hoptm", breast, buffers)
    d.step(0)
    before = d.images.detach().clone()
    monkeypatch.setattr(type(d), "loss_terms", lambda self, *a: {"potential": (1.0, torch.tensor(float("nan")))})
    with pytest.raises(DivergenceError, match=r"hoptm: potential became NaN at iteration 1"):
        d.step(1)
    assert torch.equal(d.images.detach(), before)  # nothing was updated


def test_hoptm_mask_is_never_empty_nan():
    start, target = torch.zeros(100), torch.linspace(0.1, 1.0, 100)
    student = target + torch.linspace(1.0, 0.0, 100)
    empty = torch.zeros(100, dtype=torch.bool)
    loss, used = masked_distance(student, start, target, empty, min_fraction=0.05)
    assert torch.isfinite(loss) and int(used.sum()) == 5
    assert bool(used[-5:].all())  # the easiest (smallest error) parameters are admitted first
    full, _ = masked_distance(student, start, target, ~empty)
    assert full.item() == pytest.approx(normalised_distance(student, start, target).item())
    pts = torch.randn(3, 50)
    assert shape_potential(pts.clone(), pts).item() == 0.0  # identical shapes: zero potential
    assert shape_potential(pts[[0, 2, 1]], pts).item() > 0


def test_hoptm_mask_grows(breast, buffers):
    d = distiller("hoptm", breast, buffers, base_threshold=0.05, growing_factor=10.0, grow_every=2)
    used = [d.step(it)["utilization"] for it in range(6)]
    assert used == sorted(used) and used[-1] > used[0] > 0
