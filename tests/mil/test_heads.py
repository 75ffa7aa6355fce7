"""Tests of the MIL heads: shapes, masking, gradients, AMP, small bags, and fitting a toy separable problem.

The toy problem only shows that each head can learn; learning real tissue is tested with the cohort later.
"""

from __future__ import annotations

import pytest
import torch

from mil.heads import MIL_HEADS, MILOutput, NystromAttention, get_mil_head, iterative_pinv
from mil.heads.nystrom import segment_means

NAMES = ["clam_sb", "clam_mb", "dsmil", "transmil", "abmil", "mean", "max"]
F_DIM = 32
# Small widths keep the suite fast on shared CPUs; TransMIL's 8 landmarks make bags of 7 and 11 instances take
# the Nyström path (10 and 17 tokens) while a bag of 3 (5 tokens) takes the exact one.
SMALL = {
    "clam_sb": {"hidden_dim": 32, "attention_dim": 16, "k_sample": 2},
    "clam_mb": {"hidden_dim": 32, "attention_dim": 16, "k_sample": 2},
    "dsmil": {"query_dim": 16},
    "transmil": {"dim": 32, "heads": 2, "num_landmarks": 8},
    "abmil": {"hidden_dim": 32, "attention_dim": 16},
    "mean": {"hidden_dim": 32},
    "max": {"hidden_dim": 32},
}


def small_head(name: str, num_classes: int = 2, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return get_mil_head(name, F_DIM, num_classes, **{**SMALL[name], **overrides})


def padded_batch(sizes: list[int], seed: int = 0, pad_value: float = 1e3) -> tuple[list, torch.Tensor, torch.Tensor]:
    """Bags of the given sizes, and the same bags padded with large junk so that leaking padding shows."""
    g = torch.Generator().manual_seed(seed)
    bags = [torch.randn(n, F_DIM, generator=g) for n in sizes]
    n_max = max(sizes)
    x = torch.full((len(sizes), n_max, F_DIM), pad_value)
    mask = torch.zeros(len(sizes), n_max, dtype=torch.bool)
    for i, bag in enumerate(bags):
        x[i, : len(bag)] = bag
        mask[i, : len(bag)] = True
    return bags, x, mask


def assert_finite(out: MILOutput) -> None:
    assert torch.isfinite(out.logits).all()
    assert torch.isfinite(out.instance_scores).all()


def test_registry_has_every_head():
    assert set(NAMES) == set(MIL_HEADS.names())


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError) as err:
        get_mil_head("clam_xl", F_DIM, 2)
    for name in NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 7, 500])
def test_output_shapes_default_sizes(name, n):
    head = get_mil_head(name, F_DIM, 3).eval()
    x = torch.randn(n, F_DIM)
    with torch.no_grad():
        single = head(x)
        batched = head(x.unsqueeze(0))
    for out in (single, batched):
        assert out.logits.shape == (1, 3)
        assert out.instance_scores.shape in ((1, n), (1, n, 3))
        assert out.class_scores(2).shape == (1, n)
        assert_finite(out)
    torch.testing.assert_close(single.logits, batched.logits)
    total, parts = head.loss(single, torch.tensor([2]))
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())


@pytest.mark.parametrize("name", NAMES)
def test_padded_batch_equals_single_bags(name):
    head = small_head(name, num_classes=3).eval()
    bags, x, mask = padded_batch([3, 7, 11])
    with torch.no_grad():
        batch = head(x, mask)
        assert_finite(batch)
        for i, bag in enumerate(bags):
            alone = head(bag)
            n = len(bag)
            torch.testing.assert_close(batch.logits[i], alone.logits[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batch.instance_scores[i, :n], alone.instance_scores[0], atol=1e-5, rtol=1e-5)
            assert (batch.instance_scores[i, n:] == 0).all(), "padding must score exactly 0"


@pytest.mark.parametrize("name", NAMES)
def test_unpadded_batch_equals_single_bags(name):
    head = small_head(name).eval()
    x = torch.randn(3, 9, F_DIM)
    with torch.no_grad():
        batch = head(x)
        for i in range(3):
            alone = head(x[i])
            torch.testing.assert_close(batch.logits[i], alone.logits[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batch.instance_scores[i], alone.instance_scores[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    head = small_head(name).train()
    _, x, mask = padded_batch([3, 7, 11, 5], seed=1)
    out = head(x, mask)
    total, parts = head.loss(out, torch.tensor([0, 1, 0, 1]))
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
    total.backward()
    for pname, p in head.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


@pytest.mark.parametrize("name", NAMES)
def test_single_instance_bag_backward(name):
    head = small_head(name).train()
    out = head(torch.randn(1, F_DIM))
    total, _ = head.loss(out, torch.tensor([1]))
    total.backward()
    assert torch.isfinite(total)
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ["clam_sb", "clam_mb"])
@pytest.mark.parametrize("subtyping", [False, True])
def test_clam_instance_loss_with_bags_smaller_than_2k(name, subtyping):
    head = small_head(name, k_sample=8, subtyping=subtyping).train()
    out = head(torch.randn(3, F_DIM))
    total, parts = head.loss(out, torch.tensor([1]))
    assert torch.isfinite(total) and parts["instance"] > 0  # k' = 1: one top and one bottom instance
    total.backward()

    # A one-instance bag has nothing to cluster; in a batch it is skipped, alone it contributes 0.
    _, parts = head.loss(head(torch.randn(1, F_DIM)), torch.tensor([0]))
    assert parts["instance"] == 0
    _, x, mask = padded_batch([1, 20])
    total, parts = head.loss(head(x, mask), torch.tensor([0, 1]))
    assert torch.isfinite(total) and parts["instance"] > 0


def test_dsmil_loss_mixes_streams():
    head = small_head("dsmil", bag_weight=0.3, max_weight=0.7).eval()
    out = head(torch.randn(9, F_DIM))
    total, parts = head.loss(out, torch.tensor([1]))
    torch.testing.assert_close(total, 0.3 * parts["bag"] + 0.7 * parts["max"])
    torch.testing.assert_close(out.logits, 0.5 * (out.aux["bag_logits"] + out.aux["max_logits"]))


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_is_finite(name):
    head = small_head(name).train()
    _, x, mask = padded_batch([3, 7, 11], seed=2, pad_value=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x, mask)
        total, _ = head.loss(out, torch.tensor([0, 1, 1]))
    assert_finite(out)
    assert torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def toy_bags(n_bags: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian-noise bags of 5-20 instances; positive bags hide 1-3 instances with a shifted mean."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(5, 21, (n_bags,), generator=g).tolist()
    labels = torch.arange(n_bags) % 2
    x = torch.zeros(n_bags, max(sizes), F_DIM)
    mask = torch.zeros(n_bags, max(sizes), dtype=torch.bool)
    for i, n in enumerate(sizes):
        x[i, :n] = torch.randn(n, F_DIM, generator=g)
        mask[i, :n] = True
        if labels[i]:
            k = int(torch.randint(1, 4, (1,), generator=g))
            x[i, :k] += 2.0
    return x, mask, labels


@pytest.mark.parametrize("name", NAMES)
def test_fits_a_toy_separable_problem(name):
    head = small_head(name, dropout=0.0).train()
    x, mask, labels = toy_bags()
    opt = torch.optim.Adam(head.parameters(), lr=5e-3)
    totals, bag_losses = [], []
    for _ in range(40):
        opt.zero_grad()
        total, parts = head.loss(head(x, mask), labels)
        total.backward()
        opt.step()
        totals.append(total.item())
        bag_losses.append(parts["bag"].item())
    head.eval()
    with torch.no_grad():
        accuracy = (head(x, mask).logits.argmax(1) == labels).float().mean().item()
    assert accuracy == 1.0
    # CLAM's instance term chases moving pseudo-labels, so the bag term is the one that must collapse
    # (over 5 seeds it ended at <= 6% of its start for every head).
    assert bag_losses[-1] < 0.2 * bag_losses[0]
    assert totals[-1] < totals[0]


def test_bad_inputs_raise_clear_errors():
    head = small_head("abmil")
    with pytest.raises(ValueError, match="expects 32 features"):
        head(torch.randn(4, 16))
    with pytest.raises(ValueError, match="at least one real instance"):
        head(torch.randn(2, 4, F_DIM), torch.tensor([[True] * 4, [False] * 4]))
    with pytest.raises(ValueError, match="labels"):
        head.loss(head(torch.randn(4, F_DIM)), torch.tensor([0, 1]))
    with pytest.raises(TypeError):
        get_mil_head("dsmil", F_DIM, 2, no_such_option=1)
    with pytest.raises(ValueError, match="num_classes"):
        get_mil_head("mean", F_DIM, 1)


def test_iterative_pinv_matches_pseudo_inverse():
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(3, 8, 8), dim=-1)
    torch.testing.assert_close(iterative_pinv(a, iterations=30), torch.linalg.pinv(a), atol=1e-4, rtol=1e-4)


def test_segment_means_are_landmark_averages():
    t = torch.randn(2, 12, 4)
    torch.testing.assert_close(segment_means(t, 4), t.reshape(2, 4, 3, 4).mean(2))
    uneven = segment_means(torch.arange(10.0).reshape(10, 1), 4)  # segments of 3, 2, 3, 2 tokens
    assert uneven.squeeze(-1).tolist() == [1.0, 3.5, 6.0, 8.5]


def test_nystrom_is_exact_when_short_and_approaches_exact_with_more_landmarks():
    torch.manual_seed(0)
    exact = NystromAttention(16, heads=2, num_landmarks=64, residual_conv_kernel=0).eval()
    x = torch.randn(1, 64, 16)
    with torch.no_grad():
        out_exact, row_exact = exact(x)
        q, k, _ = (t.reshape(1, 64, 2, 8).transpose(1, 2) for t in exact.to_qkv(x).chunk(3, dim=-1))
        attn = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1)
    torch.testing.assert_close(row_exact, attn[:, :, 0].mean(1))

    errors = []
    for landmarks in (16, 32, 48):
        approx = NystromAttention(16, heads=2, num_landmarks=landmarks, residual_conv_kernel=0).eval()
        approx.load_state_dict(exact.state_dict())
        with torch.no_grad():
            errors.append(((approx(x)[0] - out_exact).norm() / out_exact.norm()).item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] < 0.1  # uniform attention (the mean of V) is 0.21 away on these tokens
