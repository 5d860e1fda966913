"""BCL's per-image extra augmentation: each operation by hand, strength 0 is the identity,
strengths act per image, and the batched result stays an image."""

from __future__ import annotations

import pytest
import torch

from fassl.augment import boost as B
from fassl.augment.views import ViewAugment
from fassl.config import AugmentConfig


def _images(n: int = 6, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ops", ["randaugment", "common"])
def test_strength_zero_is_the_identity(ops) -> None:
    x = _images()
    out = B.boost_views(x, torch.zeros(6), B.BoostSpec(ops, num_ops=3))
    assert torch.equal(out, x)


@pytest.mark.parametrize("ops", ["randaugment", "common"])
def test_strength_acts_per_image_and_stays_in_range(ops) -> None:
    torch.manual_seed(0)
    x = _images(n=64)
    strength = torch.zeros(64)
    strength[32:] = 1.0
    out = B.boost_views(x, strength, B.BoostSpec(ops, num_ops=2))
    assert torch.equal(out[:32], x[:32])  # strength 0: untouched
    changed = (out[32:] - x[32:]).abs().flatten(1).amax(dim=1) > 1e-6
    assert changed.float().mean() > 0.8  # strength 1: applied (a few ops can be no-ops)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_every_operation_is_the_identity_at_magnitude_zero() -> None:
    x = _images()
    zero = torch.zeros(6)
    for name, op in B.PIXEL_OPS.items():
        if name in ("autocontrast", "invert", "equalize", "grayscale"):
            continue  # no magnitude: they always change the image
        assert torch.allclose(op(x, zero), x, atol=1e-6), name
    for name, theta in B.geometric_matrices([*B.GEOMETRIC[:6]], zero).items():
        assert torch.allclose(theta, torch.eye(2, 3).expand(6, 2, 3)), name


def test_pixel_operations_by_hand() -> None:
    x = torch.tensor([0.0, 0.2, 0.6, 1.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2).contiguous()
    one = torch.ones(1)
    assert torch.allclose(B.invert(x, one), 1 - x)
    # threshold 110/255 = 0.431 at magnitude 1: 0.6 and 1.0 inverted
    assert B.solarize(x, one)[0, 0].flatten().tolist() == pytest.approx([0.0, 0.2, 0.4, 0.0])
    # 4 bits dropped: 0.6 * 255 = 153 -> 144, 1.0 -> 240, 0.2 * 255 = 51 -> 48
    assert (B.posterize(x, one)[0, 0].flatten() * 255).round().tolist() == [0, 48, 144, 240]
    stretched = B.autocontrast(x * 0.5 + 0.25, one)
    assert torch.allclose(stretched, x)
    # brightness with factor 1 +- 0.9: either 0.1 x or 1.9 x (clamped)
    b = B.brightness(x, one)[0, 0].flatten()
    assert torch.allclose(b, 0.1 * x[0, 0].flatten()) or torch.allclose(
        b, (1.9 * x[0, 0].flatten()).clamp(0, 1)
    )
    gray = B.grayscale(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1), one)
    assert gray.flatten().tolist() == pytest.approx([0.2989] * 3)


def test_equalize_spreads_a_narrow_histogram() -> None:
    # four levels, four pixels each: PIL's step = (16 - 4) // 255 = 0 -> kept as is
    x = torch.tensor([0.1, 0.2, 0.3, 0.4]).repeat_interleave(4).view(1, 1, 4, 4).expand(1, 3, 4, 4)
    assert torch.equal(B.equalize(x.contiguous(), torch.ones(1)), x)
    # 1,024 pixels, two levels of 512: step = (1024 - 512) // 255 = 2, lut = (1 + before) // 2:
    # the lower level -> 0, the upper -> 513 // 2 = 256, clamped to 255
    big = torch.full((1, 3, 32, 32), 0.2)
    big[..., 16:, :] = 0.3
    out = B.equalize(big, torch.ones(1))
    assert float(out[0, 0, 0, 0]) == 0.0 and float(out[0, 0, -1, -1]) == 1.0
    # three levels 0.2 / 0.3 / 0.4 of 341, 341, 342 pixels: step 2, the middle -> 171 / 255
    three = torch.full((1, 3, 1, 1024), 0.2)
    three[..., 341:682] = 0.3
    three[..., 682:] = 0.4
    mid = B.equalize(three, torch.ones(1))[0, 0, 0, 400]
    assert float(mid) * 255 == pytest.approx((1 + 341) // 2)


def test_cutout_square_has_the_magnitudes_size() -> None:
    torch.manual_seed(3)
    x = torch.zeros(1, 3, 20, 20)
    out = B.cutout(x, torch.tensor([0.5]))  # side 0.4 * 0.5 * 20 = 4 pixels
    covered = (out[0, 0] > 0).sum().item()
    assert 0 < covered <= 16


def test_translate_moves_by_its_share_of_the_side() -> None:
    x = torch.zeros(1, 1, 10, 10)
    x[0, 0, :, 4] = 1.0
    theta = B.geometric_matrices(["translate_x"], torch.tensor([10 / 66]))["translate_x"]
    grid = torch.nn.functional.affine_grid(theta, [1, 1, 10, 10], align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, align_corners=False)
    column = out[0, 0].sum(dim=0).argmax().item()  # 0.1 of the side: one pixel either way
    assert column in (3, 5)


def test_two_view_augment_boosts_only_with_a_strength() -> None:
    cfg = AugmentConfig()
    aug = ViewAugment(cfg, 8, (0.5,) * 3, (0.25,) * 3, B.BoostSpec("randaugment"))
    images = (_images(n=4) * 255).to(torch.uint8)
    torch.manual_seed(0)
    plain = aug(images)
    torch.manual_seed(0)
    zero = aug(images, torch.zeros(4))
    assert all(torch.equal(a, b) for a, b in zip(plain, zero, strict=True))
    torch.manual_seed(0)
    boosted = aug(images, torch.ones(4))
    assert not torch.equal(plain[0], boosted[0])
    with pytest.raises(ValueError, match="boost ops"):
        B.BoostSpec("autoaugment")
