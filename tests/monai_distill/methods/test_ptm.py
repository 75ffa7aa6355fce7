"""PTM's parts checked directly (seed 000): end-step schedule, Eq. 3, Eq. 4 (MMD), retraining points and restore."""

from __future__ import annotations

import math

import pytest
import torch

from monai_distill.data import load_medmnist
from monai_distill.methods.ptm import end_step, overlap_loss, retraining_points, retraining_schedule
from monai_distill.methods.trajectory import Plan, Unrolled

from .trajectory_helpers import distiller


@pytest.fixture(scope="module")
def breast(medmnist_dir):
    return load_medmnist("breastmnist", "train", medmnist_dir)


@pytest.fixture(scope="module")
def buffers(tmp_path_factory):
    return tmp_path_factory.mktemp("ptm_buffers")


def test_end_step_grows_from_one_to_t():
    steps = [end_step(it, 5, 10) for it in range(14)]
    assert steps == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 5, 5, 5, 5]
    assert [end_step(it, 3, 3) for it in range(4)] == [1, 2, 3, 3]


def test_retraining_points_follow_the_formula():
    assert retraining_points(10, 4) == pytest.approx([8, 6, 4, 2])  # m_i = T - T/(k+1) i
    assert retraining_points(9, 2) == pytest.approx([6, 3])
    pairs = retraining_schedule(4, 100)
    assert pairs == [(10, 20), (30, 40), (50, 60), (70, 80)]
    # In end-step units (tau = T it / n): each retraining iteration is the first at or past its m_i, each snapshot
    # the first at or past the middle of the previous interval (m_i + m_{i+1}) / 2, m_{k+1} = 0.
    t, n = 10, 100
    m = [*sorted(retraining_points(t, 4)), t]
    for j, (snap, retrain) in enumerate(pairs):
        mid = (m[j] + (m[j - 1] if j else 0)) / 2
        assert t * (retrain - 1) / n < m[j] <= t * retrain / n
        assert t * (snap - 1) / n < mid <= t * snap / n


def test_overlap_is_zero_for_identical_halves_and_negative_mmd_otherwise():
    torch.manual_seed(0)
    half = torch.randn(4, 16)
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    found, comp = torch.arange(4), torch.arange(4, 8)
    same = overlap_loss(torch.cat([half, half]), labels, found, comp)
    assert same.abs().item() < 1e-6
    feats = torch.cat([half, half + 0.5]).requires_grad_(True)
    apart = overlap_loss(feats, labels, found, comp, sigma=2.0)
    assert apart.item() < 0
    apart.backward()
    # Descending the loss moves the complement away from the foundation of its class.
    moved = feats.detach() - 1.0 * feats.grad
    assert (moved[4:] - moved[:4]).norm() > (feats.detach()[4:] - feats.detach()[:4]).norm()
    # Pairs of different classes do not count (the indicator of Eq. 4): moving class 1 far away changes nothing.
    far = feats.detach().clone()
    far[labels == 1] += 100.0
    base = overlap_loss(feats.detach(), labels, found, comp)
    assert overlap_loss(far, labels, found, comp).item() == pytest.approx(base.item(), abs=1e-5)


def test_normalised_matching_loss_starts_at_theta_zero(breast, buffers):
    d = distiller("ptm", breast, buffers, overlap=False)
    p = d.fnet.num_params
    traj = torch.zeros(4, p)
    traj[1] = 1.0
    traj[2] = 2.0  # ||theta_2 - theta_0||^2 = 4 p
    student = torch.full((p,), 3.0)  # ||student - theta_2||^2 = p
    terms = d.loss_terms(0, Plan(0, 0, 2, 1), traj, Unrolled([traj[0], student], [torch.tensor(0.5)]))
    assert terms["match"][1].item() == pytest.approx(0.25)
    assert terms["ce"][1].item() == 0.5 and "overlap" not in terms


def test_schedule_drives_the_steps(breast, buffers):
    d = distiller("ptm", breast, buffers, num_iterations=6, syn_steps=6, max_end_epoch=3, overlap=False)
    logs = [d.step(it) for it in range(6)]
    assert [r["end_epoch"] for r in logs] == [end_step(it, 3, 6) for it in range(6)] == [1, 1, 2, 2, 3, 3]
    assert [r["syn_steps"] for r in logs] == [2, 2, 4, 4, 6, 6]  # ceil(syn_steps t / T): fewer steps early
    off = distiller("ptm", breast, buffers, progressive=False, syn_steps=3)
    plans = [off.plan(it) for it in range(6)]
    assert all(p.end - p.start == 1 and p.syn_steps == 3 and p.start <= 1 for p in plans)


def test_dynamic_retraining_restores_the_complement_snapshot(breast, buffers):
    d = distiller("ptm", breast, buffers, num_iterations=6, retrain_points=2)
    assert d.schedule == [(1, 2), (3, 4)]
    assert d.foundation.tolist() == [0, 2] and d.complement.tolist() == [1, 3]
    d.step(0)
    at_snapshot = d.images.detach()[d.complement].clone()
    d.step(1)  # takes the snapshot at its start, then moves the images
    moved = d.images.detach().clone()
    assert not torch.equal(moved[d.complement], at_snapshot)
    d.before_step(2)
    assert torch.equal(d.images.detach()[d.complement], at_snapshot)
    assert torch.equal(d.images.detach()[d.foundation], moved[d.foundation])  # the foundation half is kept
    assert not d.opt_img.state[d.images]["momentum_buffer"][d.complement].any()
    logs = [d.step(it) for it in range(2, 6)]
    assert all("overlap" in r for r in logs)


def test_parts_can_be_switched_off(breast, buffers):
    d = distiller("ptm", breast, buffers, overlap=False, retrain=False, ce_weight=0.0)
    row = d.step(0)
    assert d.schedule == [] and "overlap" not in row
    assert row["loss"] == pytest.approx(row["match"])  # L_c has weight 0
    one = distiller("ptm", breast, buffers, ipc=1)  # no complement half at ipc 1: nothing to mitigate
    assert one.complement.numel() == 0 and one.schedule == [] and "overlap" not in one.step(0)


def test_matching_loss_falls(breast, buffers):
    d = distiller("ptm", breast, buffers, num_iterations=12, max_end_epoch=1, dsa=False, overlap=False,
                  ce_weight=0.0, lr_img=1000.0, buffers={"num_experts": 1})
    losses = [d.step(it)["match"] for it in range(12)]
    assert sum(losses[-3:]) < sum(losses[:3])


def test_overlap_on_expert_features_differs_from_student_features_and_is_checked(breast, buffers):
    values = {}
    for where in ("student", "expert"):
        d = distiller("ptm", breast, buffers, ipc=4, num_iterations=2, overlap_features=where, retrain=False)
        values[where] = d.step(0)["overlap"]
    assert all(math.isfinite(v) and v <= 1e-6 for v in values.values())  # -MMD² is never positive
    assert values["student"] != pytest.approx(values["expert"], abs=1e-9)
    with pytest.raises(ValueError, match="overlap_features"):
        distiller("ptm", breast, buffers, overlap_features="teacher")
