"""Tests for monai_distill.networks: the embed/classifier contract, 2D/3D, functional_call, norms, sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from monai_distill.networks import (
    NETWORKS,
    ConvNet,
    convnet_padding,
    get_network,
    network_names,
    vit_patch_size,
)

NAMES = ["alexnet", "convnet", "densenet121", "lenet", "resnet18", "resnetap10", "vit"]
NUM_CLASSES = 3
# The MONAI nets ignore `width`; slimmer versions of the same architectures keep the suite fast on two cores.
# test_monai_nets_default_size runs the full-size ones once.
SLIM = {"resnet18": {"widen_factor": 0.25}, "densenet121": {"init_features": 16, "growth_rate": 8}}


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded, single-threaded: on a busy two-core machine torch's spinning intra-op threads made these small
    networks up to ten times slower."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _small(name: str, spatial_dims: int, in_channels: int, size: int | tuple[int, ...], **kwargs) -> nn.Module:
    """A test-sized network: width 8, one ViT block pair instead of three, slim MONAI nets."""
    depth = 1 if name == "vit" else 3
    kwargs = SLIM.get(name, {}) | kwargs
    return get_network(name, spatial_dims, in_channels, NUM_CLASSES, size, width=8, depth=depth, **kwargs)


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return dict(net.named_parameters()) | dict(net.named_buffers())


def _check_contract(net: nn.Module, x: torch.Tensor) -> None:
    """Shapes, forward == classifier(embed), functional_call == forward, finite gradients for every parameter."""
    logits = net(x)
    assert logits.shape == (x.shape[0], NUM_CLASSES)
    feats = net.embed(x)
    assert feats.shape == (x.shape[0], net.feature_dim)
    assert isinstance(net.classifier, nn.Linear)
    assert net.classifier.in_features == net.feature_dim
    assert net.classifier.out_features == NUM_CLASSES
    torch.testing.assert_close(net.classifier(feats), logits)
    torch.testing.assert_close(functional_call(net, _state(net), (x,)), logits)

    loss = nn.functional.cross_entropy(logits, torch.arange(x.shape[0]) % NUM_CLASSES)
    loss.backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


def test_network_names() -> None:
    assert network_names() == NAMES
    assert NETWORKS.names() == NAMES


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", NAMES)
def test_contract_28px_one_channel(name: str, spatial_dims: int) -> None:
    net = _small(name, spatial_dims, 1, 28)
    _check_contract(net, torch.randn(2, 1, *(28,) * spatial_dims))


@pytest.mark.parametrize("name", NAMES)
def test_contract_2d_28px_rgb(name: str) -> None:
    net = _small(name, 2, 3, (28, 28))
    _check_contract(net, torch.randn(2, 3, 28, 28))


@pytest.mark.parametrize("name", NAMES)
def test_contract_2d_64px(name: str) -> None:
    net = _small(name, 2, 1, 64)
    _check_contract(net, torch.randn(2, 1, 64, 64))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_convnet_64px(spatial_dims: int) -> None:
    net = _small("convnet", spatial_dims, 1, 64)
    assert net.feature_dim == 8 * 8**spatial_dims  # 64 / 2**3 = 8 per axis, no padding needed
    _check_contract(net, torch.randn(2, 1, *(64,) * spatial_dims))


@pytest.mark.parametrize("name", NAMES)
def test_3d_64px_forward(name: str) -> None:
    net = _small(name, 3, 1, 64).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 64, 64, 64)).shape == (1, NUM_CLASSES)


@pytest.mark.parametrize(("name", "feature_dim"), [("resnet18", 512), ("densenet121", 1024)])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_monai_nets_default_size(name: str, feature_dim: int, spatial_dims: int) -> None:
    net = get_network(name, spatial_dims, 1, NUM_CLASSES, 28).eval()
    assert net.feature_dim == feature_dim
    x = torch.randn(1, 1, *(28,) * spatial_dims)
    with torch.no_grad():
        assert net(x).shape == (1, NUM_CLASSES)


@pytest.mark.parametrize("name", ["convnet", "resnetap10", "lenet", "alexnet", "vit"])
def test_unrolled_functional_step_reaches_images(name: str) -> None:
    """Trajectory matching: one student step through functional_call, then a loss on the updated weights must give
    gradients to the (synthetic) images."""
    net = _small(name, 2, 1, 28)
    x = torch.randn(4, 1, 28, 28, requires_grad=True)
    y = torch.arange(4) % NUM_CLASSES
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    buffers = dict(net.named_buffers())
    loss0 = nn.functional.cross_entropy(functional_call(net, params | buffers, (x,)), y)
    grads = torch.autograd.grad(loss0, list(params.values()), create_graph=True)
    stepped = {k: p - 0.01 * g for (k, p), g in zip(params.items(), grads)}
    target = {k: v.detach() + 0.1 for k, v in net.named_parameters()}
    match = sum(((stepped[k] - target[k]) ** 2).sum() for k in stepped)
    match.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for p in net.parameters():  # the module's own tensors were not touched
        assert p.grad is None


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(KeyError) as err:
        get_network("no_such_net", 2, 1, 2, 28)
    for name in NAMES:
        assert name in str(err.value)


def test_name_is_case_insensitive() -> None:
    assert isinstance(get_network("ConvNet", 2, 1, 2, 28, width=8), ConvNet)


def test_spatial_size_int_or_tuple() -> None:
    a = get_network("convnet", 3, 1, 2, 16, width=4)
    b = get_network("convnet", 3, 1, 2, (16, 16, 16), width=4)
    assert a.feature_dim == b.feature_dim == 4 * 2**3
    with pytest.raises(ValueError, match="axes"):
        get_network("convnet", 3, 1, 2, (16, 16), width=4)


def test_convnet_reference_layout() -> None:
    """Defaults are the DC/MTT ConvNet: width 128, instance norm as GroupNorm(128, 128), 28 px padded like 32."""
    net = get_network("convnet", 2, 1, 10, 28)
    types = [type(m) for m in net.features]
    assert types == [nn.Conv2d, nn.GroupNorm, nn.ReLU, nn.AvgPool2d] * 3
    norms = [m for m in net.features if isinstance(m, nn.GroupNorm)]
    assert all(m.num_groups == 128 and m.num_channels == 128 and m.affine for m in norms)
    assert net.features[0].padding == (3, 3)
    assert net.feature_dim == 128 * 4 * 4
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    rgb32 = get_network("convnet", 2, 3, 10, 32)
    assert rgb32.features[0].padding == (1, 1)
    assert rgb32.feature_dim == 128 * 4 * 4


def test_convnet_padding_rule() -> None:
    assert convnet_padding((28, 32, 64), 3) == ((3, 1, 1), (0, 0, 0))
    assert convnet_padding((29,), 3) == ((2,), (1,))  # 29 + 3 = 32: 1 on each side from the conv, 1 extra high
    net = get_network("convnet", 2, 1, 2, (29, 28), width=4)
    assert net.feature_dim == 4 * 4 * 4
    assert net(torch.randn(2, 1, 29, 28)).shape == (2, 2)


@pytest.mark.parametrize(
    ("norm", "expected"),
    [
        ("instance", (nn.GroupNorm, 8)),
        ("instancenorm", (nn.GroupNorm, 8)),
        ("layer", (nn.GroupNorm, 1)),
        ("group", (nn.GroupNorm, 4)),
        ("batch", (nn.BatchNorm3d, None)),
        ("none", None),
    ],
)
def test_convnet_norms(norm: str, expected: tuple | None) -> None:
    net = get_network("convnet", 3, 1, NUM_CLASSES, 16, width=8, depth=2, norm=norm)
    norms = [m for m in net.features if isinstance(m, (nn.GroupNorm, nn.BatchNorm3d))]
    if expected is None:
        assert norms == []
    else:
        cls, groups = expected
        assert len(norms) == 2 and all(type(m) is cls for m in norms)
        if groups is not None:
            assert all(m.num_groups == groups for m in norms)
    _check_contract(net, torch.randn(2, 1, 16, 16, 16))
    net.eval()
    x = torch.randn(2, 1, 16, 16, 16)
    torch.testing.assert_close(functional_call(net, _state(net), (x,)), net(x))


@pytest.mark.parametrize("norm", ["instance", "batch", "layer", "none"])
def test_resnetap_norms(norm: str) -> None:
    net = get_network("resnetap10", 2, 3, NUM_CLASSES, 28, width=8, norm=norm)
    if norm == "instance":
        assert isinstance(net.norm1, nn.GroupNorm) and net.norm1.num_groups == 8
    if norm == "none":
        assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) for m in net.modules())
    _check_contract(net, torch.randn(2, 3, 28, 28))


def test_resnetap_downsamples_by_average_pooling() -> None:
    net = get_network("resnetap10", 2, 1, 2, 64, width=8)
    assert not any(isinstance(m, nn.Conv2d) and m.stride != (1, 1) for m in net.modules())
    assert len(net.stem_pool) == 1  # 64 px is brought to 32 before the stages
    assert net.feature_dim == 64


def test_unknown_norm_and_option() -> None:
    with pytest.raises(ValueError, match="norm"):
        get_network("convnet", 2, 1, 2, 28, width=4, norm="weird")
    with pytest.raises(TypeError):
        get_network("convnet", 2, 1, 2, 28, width=4, no_such_option=1)


def test_reference_sizes_of_classic_nets() -> None:
    lenet = get_network("lenet", 2, 1, 10, 28)
    assert lenet.fc_1.in_features == 16 * 5 * 5 and lenet.feature_dim == 84
    alex = get_network("alexnet", 2, 1, 10, 28)
    convs = [m.out_channels for m in alex.features if isinstance(m, nn.Conv2d)]
    assert convs == [128, 192, 256, 192, 192]
    assert alex.features[0].padding == (4, 4)
    assert alex.feature_dim == 192 * 4 * 4


def test_vit_sizes() -> None:
    assert vit_patch_size((28, 64, 16)) == (4, 8, 2)
    net = get_network("vit", 2, 1, 2, 28, width=8, depth=2)
    assert net.feature_dim == 16 and len(net.backbone.blocks) == 4
    with pytest.raises(ValueError, match="num_heads"):
        get_network("vit", 2, 1, 2, 28, width=3)


def test_densenet_too_small_input() -> None:
    with pytest.raises(ValueError, match="too small"):
        get_network("densenet121", 2, 1, 2, 8)
