import pytest
import torch

from fassl.errors import IncompatibleCheckpoint
from fassl.models import build_backbone
from fassl.models.pruning import (
    DualNorm,
    add_pruned_norms,
    dense_state_dict,
    global_magnitude_masks,
    pruned_norms,
    pruned_weight_names,
)
from fassl.models.state import load_state_checked


@pytest.mark.parametrize(("arch", "width", "dim"), [("resnet18", 8, 64), ("resnet50", 4, 128)])
def test_backbone_shapes(arch, width, dim):
    net = build_backbone(arch, width)
    assert net.out_dim == dim
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, dim)


def test_resnet18_width64_parameter_count():
    # The CIFAR ResNet-18 of SDCLR has 11.17M parameters without its head.
    n = sum(p.numel() for p in build_backbone("resnet18", 64).parameters())
    assert 11_100_000 < n < 11_250_000


def test_global_mask_keeps_exact_share():
    g = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(10, 3, generator=g), "b": torch.randn(7, generator=g)}
    masks = global_magnitude_masks(weights, 0.9)
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == 37 - 34  # SDCLR prunes ceil(0.9 * 37) = 34 (round would give 33)
    # Every kept weight is at least as large as every pruned one (one global threshold).
    flat_w = torch.cat([w.abs().flatten() for w in weights.values()])
    flat_m = torch.cat([m.flatten() for m in masks.values()])
    assert flat_w[flat_m].min() >= flat_w[~flat_m].max()


def test_mask_on_hand_values():
    masks = global_magnitude_masks({"w": torch.tensor([0.1, -3.0, 2.0, -0.5])}, 0.5)
    assert masks["w"].tolist() == [False, True, True, False]


def test_dual_batchnorm_routes_and_strips():
    net = add_pruned_norms(build_backbone("resnet18", 4))
    duals = [m for m in net.modules() if isinstance(m, DualNorm)]
    assert duals and not any(d.use_pruned for d in duals)
    x = torch.randn(4, 3, 16, 16)
    net(x)
    before = duals[0].pruned.running_mean.clone()
    with pruned_norms(net):
        assert all(d.use_pruned for d in duals)
        net(x)
    assert not torch.equal(before, duals[0].pruned.running_mean)
    plain = build_backbone("resnet18", 4)
    plain.load_state_dict(dense_state_dict(net.state_dict()))  # strict: keys match
    assert len(pruned_weight_names(plain)) == 20


def test_load_mismatch_names_source():
    a, b = build_backbone("resnet18", 8), build_backbone("resnet18", 16)
    with pytest.raises(IncompatibleCheckpoint, match=r"ckpt\.safetensors.*shape"):
        load_state_checked(a, b.state_dict(), "ckpt.safetensors")
    with pytest.raises(IncompatibleCheckpoint, match="missing"):
        load_state_checked(build_backbone("resnet50", 4), a.state_dict(), "x")
