"""ViewAugment: shapes, exact special cases, the colour maps, determinism, autocast."""

from __future__ import annotations

import math

import pytest
import torch

from fassl.augment import colour as C
from fassl.augment import views as A
from fassl.config import AugmentConfig
from fassl.features import normalize_images

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
OFF = dict(crop_scale_min=1.0, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


def batch(n: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def unnormalize(view: torch.Tensor) -> torch.Tensor:
    return view * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


def test_shapes_dtype_and_views_differ() -> None:
    aug = A.ViewAugment(AugmentConfig(blur_p=0.5), 16, MEAN, STD)
    x = batch()
    v1, v2 = aug(x)
    assert v1.shape == v2.shape == (8, 3, 16, 16)
    assert v1.dtype == v2.dtype == torch.float32
    assert not torch.allclose(v1, v2)
    assert not torch.allclose(v1, normalize_images(x, MEAN, STD))
    assert all(not torch.allclose(v1[i], v1[i + 1]) for i in range(7))


def test_output_size_can_differ_from_the_input() -> None:
    v1, _ = A.ViewAugment(AugmentConfig(), 24, MEAN, STD)(batch(size=8))
    assert v1.shape == (8, 3, 24, 24)


def test_all_off_is_the_normalised_input() -> None:
    x = batch()
    v1, v2 = A.ViewAugment(AugmentConfig(**OFF), 16, MEAN, STD)(x)
    expected = normalize_images(x, MEAN, STD)
    torch.testing.assert_close(v1, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(v2, expected, atol=1e-5, rtol=0)


def test_flip_only_is_the_mirrored_image() -> None:
    x = batch()
    v1, _ = A.ViewAugment(AugmentConfig(**{**OFF, "flip_p": 1.0}), 16, MEAN, STD)(x)
    torch.testing.assert_close(v1, normalize_images(x.flip(-1), MEAN, STD), atol=1e-5, rtol=0)


def test_grayscale_gives_equal_channels() -> None:
    x = batch()
    v1, v2 = A.ViewAugment(AugmentConfig(**{**OFF, "grayscale_p": 1.0}), 16, MEAN, STD)(x)
    for view in (unnormalize(v1), unnormalize(v2)):
        torch.testing.assert_close(view[:, 0], view[:, 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(view[:, 1], view[:, 2], atol=1e-5, rtol=0)
    luma = torch.einsum("c,nchw->nhw", torch.tensor(C.GRAY_WEIGHTS), x.float() / 255)
    torch.testing.assert_close(unnormalize(v1)[:, 0], luma, atol=1e-5, rtol=0)


def test_seeded_determinism() -> None:
    aug = A.ViewAugment(AugmentConfig(blur_p=0.5), 16, MEAN, STD)
    x = batch()
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    b = aug(x)
    torch.manual_seed(4)
    c = aug(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_autocast_keeps_fp32() -> None:
    aug = A.ViewAugment(AugmentConfig(), 16, MEAN, STD)
    x = batch()
    torch.manual_seed(0)
    plain = aug(x)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = aug(x)
    assert mixed[0].dtype == torch.float32
    assert torch.equal(plain[0], mixed[0]) and torch.equal(plain[1], mixed[1])


def test_rejects_float_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        A.ViewAugment(AugmentConfig(), 16, MEAN, STD)(torch.rand(2, 3, 16, 16))


def test_crop_boxes_follow_scale_and_ratio() -> None:
    torch.manual_seed(0)
    boxes = A.crop_boxes(4000, 32, 32, (0.1, 1.0), torch.device("cpu"))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 32).all() and (left + w <= 32).all()
    area = h * w / 1024
    assert area.min() >= 0.08 and area.max() <= 1.0  # 0.1..1, up to pixel rounding
    ratio = w / h
    assert ratio.min() >= 0.7 and ratio.max() <= 1.45
    assert area.mean() == pytest.approx(0.55, abs=0.05)  # uniform scale, few fallbacks


def test_crop_of_a_quadrant_upsamples_it() -> None:
    x = torch.zeros(1, 1, 4, 4)
    x[:, :, :2, :2] = 1.0
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    out = A.crop_flip(x, box, torch.tensor([False]), 4)
    torch.testing.assert_close(out, torch.ones(1, 1, 4, 4))


def midrange(n: int = 16) -> torch.Tensor:
    """Colours away from 0 and 1, so small jitters never clamp."""
    g = torch.Generator().manual_seed(1)
    return 0.4 + 0.2 * torch.rand(n, 3, 8, 8, generator=g)


def only(**kwargs: float) -> AugmentConfig:
    base = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, jitter_p=1.0)
    return AugmentConfig(**{**base, **kwargs})


def test_brightness_scales_each_image() -> None:
    x = midrange()
    out = A.color_jitter(x, only(brightness=0.3))
    factor = out / x
    per_image = factor.flatten(1)
    torch.testing.assert_close(per_image, per_image[:, :1].expand_as(per_image))
    assert per_image.min() >= 0.7 - 1e-6 and per_image.max() <= 1.3 + 1e-6


def test_contrast_keeps_the_mean_luma() -> None:
    x = midrange()
    out = A.color_jitter(x, only(contrast=0.3))
    weights = torch.tensor(C.GRAY_WEIGHTS)
    luma = lambda t: torch.einsum("c,nchw->n", weights, t) / 64  # noqa: E731
    # torchvision's luma weights sum to 0.9999, hence the tolerance
    torch.testing.assert_close(luma(out), luma(x), atol=1e-4, rtol=0)
    assert not torch.allclose(out, x)


def test_hue_rotation_keeps_the_luma() -> None:
    x = midrange()
    out = A.color_jitter(x, only(hue=0.1))
    y = lambda t: torch.einsum("c,nchw->nhw", torch.tensor(C.RGB_TO_YIQ[0]), t)  # noqa: E731
    torch.testing.assert_close(y(out), y(x), atol=1e-5, rtol=0)
    assert not torch.allclose(out, x)


def test_hue_half_turn_inverts_the_chroma() -> None:
    angle = torch.tensor([math.pi])
    to_yiq = torch.tensor(C.RGB_TO_YIQ)
    m = to_yiq @ C.hue_matrices(angle)[0] @ torch.linalg.inv(to_yiq)
    torch.testing.assert_close(m, torch.diag(torch.tensor([1.0, -1.0, -1.0])), atol=1e-5, rtol=0)


def test_saturation_lowers_and_raises_colourfulness() -> None:
    x = midrange()
    torch.manual_seed(0)
    out = A.color_jitter(x, only(saturation=1.0))  # factor in [0, 2]: less or more colour
    spread = (out.max(dim=1).values - out.min(dim=1).values).flatten(1).mean(1)
    before = (x.max(dim=1).values - x.min(dim=1).values).flatten(1).mean(1)
    assert (spread < before).any() and (spread > before).any()


def test_jitter_probability_zero_is_identity() -> None:
    x = midrange()
    torch.testing.assert_close(A.color_jitter(x, AugmentConfig(jitter_p=0.0)), x)


def test_blur_keeps_constants_and_smooths_edges() -> None:
    flat = torch.full((2, 3, 8, 8), 0.3)
    torch.testing.assert_close(A.random_blur(flat, 1.0, 3), flat)
    edge = torch.zeros(2, 3, 8, 8)
    edge[..., 4:] = 1.0
    out = A.random_blur(edge, 1.0, 3)
    assert ((out[..., 3] > 0) & (out[..., 3] < 1)).all()
    torch.testing.assert_close(A.random_blur(edge, 0.0, 3), edge)
    assert C.blur_kernel_size(32) == 3 and C.blur_kernel_size(224) == 23
