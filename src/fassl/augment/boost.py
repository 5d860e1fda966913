"""Per-image extra augmentation of a batch, at a strength given per image (BCL).

Boosted contrastive learning (Zhou et al., ICML 2022) augments each view once more after
the common augmentation: ``num_ops`` operations are drawn uniformly from a set (with
replacement), each applied with probability s_i (the image's strength), all at one
magnitude per image shared by both views (BCL's ``RandAugment_prob`` inside
``memoboosted_CIFAR100.__getitem__``). As a share of each operation's range, that
magnitude is (10 + 20 s_i) / 30 with one operation a view (BCL-I, ``--rand_k 1``) and
(5 + 25 s_i r_i) / 30 with more (BCL-D, ``--rand_k 2``), r_i uniform, drawn once an
image (``boost_magnitude``). The strength comes from the image's loss history
(``fassl.methods.bcl``).

Two sets: ``randaugment``, BCL's own 15 operations with its ranges, and ``common``, only
the operations of the usual SSL augmentation (crop, flip, colour, grayscale, blur), as
the FASSL paper's BCL-I row uses. Unlike BCL's PIL code, every magnitude here grows away
from the identity (BCL's solarize, posterize and its 0.1-1.9 enhancement factors are
strongest at one end and identity in the middle or at the other end), and shears,
translations and rotations pivot on the image's centre.

Everything is batched on the device: one grid_sample for all geometric operations, one
``torch.where`` per other operation; a loop runs over operations, never over images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fassl.augment.colour import (
    GRAY_WEIGHTS,
    blur_kernel_size,
    device_constant,
    gaussian_blur,
    hue_matrices,
)

CUTOUT_FILL = (125 / 255, 123 / 255, 114 / 255)  # BCL's (and RandAugment's) grey
# BCL's ranges at magnitude 1 (data/randaug.py of its code)
MAX_SHEAR = 0.6
MAX_TRANSLATE = 0.66  # share of the image side
MAX_ROTATE = 60.0  # degrees
MAX_SOLARIZE = 1.0 - 110 / 255  # the threshold falls from 1 to 110 / 255
MAX_POSTERIZE_BITS = 4  # bits removed: 8 -> 4
MAX_FACTOR = 0.9  # enhancement factors 1 +- 0.9 (BCL: 0.1-1.9)
MAX_CUTOUT = 0.4  # share of the image side
MAX_CROP = 0.9  # the crop keeps at least 10 % of the area (SDCLR's crop_scale_min)
MAX_HUE = 0.5  # share of the colour circle
MAX_BLUR = 2.0  # sigma, SimCLR's upper bound
# PIL's ImageFilter.SMOOTH: 3x3, centre weight 5, normalised
SMOOTH = tuple(tuple(v / 13 for v in row) for row in ((1, 1, 1), (1, 5, 1), (1, 1, 1)))

GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "crop", "flip")
RANDAUGMENT = (
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "autocontrast",
    "invert",
    "equalize",
    "solarize",
    "posterize",
    "contrast",
    "color",
    "brightness",
    "sharpness",
    "cutout",
)
COMMON = ("crop", "flip", "brightness", "contrast", "color", "hue", "grayscale", "blur")
OP_SETS = {"randaugment": RANDAUGMENT, "common": COMMON}


# BCL's magnitude scale (RandAugment's 0-30) and its floors "for training stability"
# (data/memoboosted_cifar100.py): 10 with one operation a view, 5 with more.
MAGNITUDE_SCALE = 30.0
MIN_MAGNITUDE = {1: 10.0, 2: 5.0}
MAGNITUDES = ("bcl", "uniform")


@dataclass(frozen=True)
class BoostSpec:
    """Which operations boost a view, how many are drawn, and the magnitude rule.

    ``magnitude="bcl"``: BCL's, one value an image for both views and every operation,
    reaching ``max_magnitude`` of each range at strength 1 (BCL's ``rand_strength`` / 30).
    ``"uniform"``: s_i * u * max_magnitude, u drawn anew for every view and operation.
    """

    ops: str = "randaugment"  # a key of OP_SETS
    num_ops: int = 1
    max_magnitude: float = 1.0
    magnitude: str = "bcl"

    def __post_init__(self) -> None:
        if self.ops not in OP_SETS:
            raise ValueError(f"boost ops must be one of {list(OP_SETS)}, got {self.ops!r}")
        if self.magnitude not in MAGNITUDES:
            raise ValueError(
                f"boost magnitude must be one of {list(MAGNITUDES)}, got {self.magnitude!r}"
            )
        if self.num_ops < 1:
            raise ValueError(f"boost num_ops must be >= 1, got {self.num_ops}")


def boost_magnitude(strength: torch.Tensor, spec: BoostSpec) -> torch.Tensor | None:
    """(N,) BCL's magnitude of each image as a share of every operation's range, or None
    for ``magnitude="uniform"`` (drawn per view and operation in ``boost_views``).

    With one operation a view, m = (10 + (30 max - 10) s) / 30: no random draw; with more,
    m = (5 + (30 max - 5) s r) / 30, r uniform in [0, 1), one draw an image.
    """
    if spec.magnitude == "uniform":
        return None
    s = strength.clamp(0, 1)
    floor = MIN_MAGNITUDE[min(spec.num_ops, 2)]
    top = spec.max_magnitude * MAGNITUDE_SCALE
    if spec.num_ops > 1:
        s = s * torch.rand(s.shape, device=s.device, dtype=s.dtype)
    return (floor + (top - floor) * s) / MAGNITUDE_SCALE


def _sign(n: int, device: torch.device) -> torch.Tensor:
    return 1.0 - 2.0 * (torch.rand(n, device=device) < 0.5).float()  # no scalar tensor


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of (N, 3, H, W)."""
    w = device_constant(GRAY_WEIGHTS, x.device, x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance blend: degenerate + factor * (x - degenerate), clamped."""
    return (degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp(0, 1)


def _factor(m: torch.Tensor) -> torch.Tensor:
    """1 +- 0.9 m, the sign drawn per image: 1 at magnitude 0."""
    return 1.0 + _sign(m.shape[0], m.device) * MAX_FACTOR * m


def geometric_matrices(op: list[str], m: torch.Tensor) -> dict[str, torch.Tensor]:
    """(N, 2, 3) ``affine_grid`` matrices (output -> input, normalised coordinates, centred)
    of each geometric operation in ``op`` at magnitudes ``m``; identity at magnitude 0."""
    n, dev = m.shape[0], m.device
    out = {}
    for name in op:
        theta = torch.eye(2, 3, device=dev).repeat(n, 1, 1)
        sign = _sign(n, dev)
        if name == "shear_x":
            theta[:, 0, 1] = sign * MAX_SHEAR * m
        elif name == "shear_y":
            theta[:, 1, 0] = sign * MAX_SHEAR * m
        elif name == "translate_x":
            theta[:, 0, 2] = sign * 2 * MAX_TRANSLATE * m  # [-1, 1] spans the side twice
        elif name == "translate_y":
            theta[:, 1, 2] = sign * 2 * MAX_TRANSLATE * m
        elif name == "rotate":
            angle = sign * math.radians(MAX_ROTATE) * m
            theta[:, 0, 0], theta[:, 0, 1] = angle.cos(), -angle.sin()
            theta[:, 1, 0], theta[:, 1, 1] = angle.sin(), angle.cos()
        elif name == "crop":  # a square crop of area 1 - 0.9 m, resized to the whole image
            side = (1.0 - MAX_CROP * m).sqrt()
            theta[:, 0, 0] = theta[:, 1, 1] = side
            theta[:, 0, 2] = (torch.rand(n, device=dev) * 2 - 1) * (1 - side)
            theta[:, 1, 2] = (torch.rand(n, device=dev) * 2 - 1) * (1 - side)
        elif name == "flip":
            theta[:, 0, 0] = -1.0
        out[name] = theta
    return out


def autocontrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Each channel stretched to [0, 1] (a flat channel is kept)."""
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    span = high - low
    return torch.where(span > 0, (x - low) / span.clamp_min(1e-12), x)


def invert(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return 1.0 - x


def equalize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of each channel on 256 levels (PIL's ``ImageOps.equalize``:
    step = (pixels - count of the top level) // 255, lut = (cdf before + step // 2) // step;
    a channel with step 0 is kept)."""
    n, c, h, w = x.shape
    levels = (x * 255).round().long().clamp(0, 255).view(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device, dtype=torch.long)
    hist.scatter_add_(1, levels, torch.ones_like(levels))
    top = hist.gather(1, levels.max(dim=1, keepdim=True).values)
    step = (h * w - top) // 255
    before = hist.cumsum(dim=1) - hist
    lut = ((before + step // 2) // step.clamp_min(1)).clamp(0, 255)
    out = lut.gather(1, levels).to(x.dtype) / 255
    return torch.where(step > 0, out, x.reshape(n * c, h * w)).view(n, c, h, w)


def solarize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Pixels above 1 - (1 - 110/255) m inverted: none at magnitude 0."""
    threshold = (1.0 - MAX_SOLARIZE * m).view(-1, 1, 1, 1)
    return torch.where(x > threshold, 1.0 - x, x)


def posterize(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """round(4 m) low bits of each 8-bit value dropped (none: the image as it is)."""
    drop = (MAX_POSTERIZE_BITS * m).round().long().view(-1, 1, 1, 1)
    levels = (x * 255).round().long().clamp(0, 255)
    return torch.where(drop > 0, ((levels >> drop) << drop).to(x.dtype) / 255, x)


def contrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    mean = _luma(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(mean.expand_as(x), x, _factor(m))


def color(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return _blend(_luma(x).expand_as(x), x, _factor(m))


def brightness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, _factor(m))


def sharpness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Blend with PIL's SMOOTH filter (3x3, centre weight 5), borders kept as they are."""
    kernel = device_constant(SMOOTH, x.device, x.dtype).expand(x.shape[1], 1, 3, 3)
    smooth = F.conv2d(x, kernel, padding=1, groups=x.shape[1])
    inner = torch.zeros(1, 1, x.shape[2] - 2, x.shape[3] - 2, device=x.device)
    border = F.pad(inner, (1, 1, 1, 1), value=1.0) > 0
    return _blend(torch.where(border, x, smooth), x, _factor(m))


def cutout(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """A grey square of side 0.4 m of the image side at a uniform centre (clipped)."""
    n, _, h, w = x.shape
    side = (MAX_CUTOUT * m * w).view(n, 1, 1)
    cy = (torch.rand(n, device=x.device) * h).view(n, 1, 1)
    cx = (torch.rand(n, device=x.device) * w).view(n, 1, 1)
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w) + 0.5
    inside = ((ys - cy).abs() < side / 2) & ((xs - cx).abs() < side / 2)
    fill = device_constant(CUTOUT_FILL, x.device, x.dtype).view(1, 3, 1, 1)
    return torch.where(inside.unsqueeze(1), fill, x)


def hue(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The chroma rotated by +-0.5 m of the colour circle (the common jitter's hue op)."""
    angle = _sign(m.shape[0], m.device) * MAX_HUE * m * 2 * math.pi
    flat = torch.bmm(hue_matrices(angle), x.flatten(2))
    return flat.view_as(x).clamp(0, 1)


def grayscale(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return _luma(x).expand_as(x).clone()


def blur(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of sigma 2 m (kernel of a tenth of the side, reflect padding)."""
    return gaussian_blur(x, (MAX_BLUR * m).clamp_min(1e-3), blur_kernel_size(x.shape[-1]))


PIXEL_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "autocontrast": autocontrast,
    "invert": invert,
    "equalize": equalize,
    "solarize": solarize,
    "posterize": posterize,
    "contrast": contrast,
    "color": color,
    "brightness": brightness,
    "sharpness": sharpness,
    "cutout": cutout,
    "hue": hue,
    "grayscale": grayscale,
    "blur": blur,
}


def boost_views(
    x: torch.Tensor,
    strength: torch.Tensor,
    spec: BoostSpec,
    magnitude: torch.Tensor | None = None,
) -> torch.Tensor:
    """``spec.num_ops`` rounds: each image draws one operation of ``spec.ops`` uniformly and
    applies it with probability s_i at magnitude ``magnitude`` (a share of the range), or,
    when None, at s_i * u * max_magnitude with u drawn anew each round.

    Args:
        x: (N, 3, H, W) float views in [0, 1] (after the common augmentation).
        strength: (N,) per-image strength in [0, 1]; 0 leaves an image exactly as it is.
        spec: the operation set, rounds and magnitude at strength 1.
        magnitude: (N,) share of each operation's range, or None.

    Returns:
        (N, 3, H, W) float views in [0, 1].
    """
    names = OP_SETS[spec.ops]
    n, dev = x.shape[0], x.device
    s = strength.to(device=dev, dtype=x.dtype).clamp(0, 1)
    if s.shape != (n,):
        raise ValueError(f"strength must have shape ({n},), got {tuple(s.shape)}")
    if magnitude is not None and magnitude.shape != (n,):
        raise ValueError(f"magnitude must have shape ({n},), got {tuple(magnitude.shape)}")
    geometric = [name for name in names if name in GEOMETRIC]
    for _ in range(spec.num_ops):
        pick = torch.randint(len(names), (n,), device=dev)
        apply = torch.rand(n, device=dev) < s
        if magnitude is None:
            m = s * torch.rand(n, device=dev) * spec.max_magnitude
        else:
            m = magnitude.to(device=dev, dtype=x.dtype)
        chosen = {name: apply & (pick == k) for k, name in enumerate(names)}
        if geometric:
            theta = torch.eye(2, 3, device=dev).repeat(n, 1, 1)
            for name, matrix in geometric_matrices(geometric, m).items():
                theta = torch.where(chosen[name].view(n, 1, 1), matrix, theta)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            warped = F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
            moved = torch.stack([chosen[name] for name in geometric]).any(dim=0)
            x = torch.where(moved.view(n, 1, 1, 1), warped, x)
        for name in names:
            if name in PIXEL_OPS:
                x = torch.where(chosen[name].view(n, 1, 1, 1), PIXEL_OPS[name](x, m), x)
    return x


def boost_two_views(both: torch.Tensor, strength: torch.Tensor, spec: BoostSpec) -> torch.Tensor:
    """Both views of a batch boosted, (2N, 3, H, W) = [view 1; view 2] of N images with
    strengths (N,): operations and their application drawn per view, the magnitude once
    an image and shared by its two views (BCL's ``__getitem__`` builds one augmentation
    per image and calls it twice)."""
    return boost_copies(both, strength, spec, 2)


def boost_copies(
    views: torch.Tensor, strength: torch.Tensor, spec: BoostSpec, copies: int
) -> torch.Tensor:
    """``copies`` views of a batch boosted, (copies * N, 3, H, W) = [view 1; view 2; ...]
    of N images with strengths (N,): as ``boost_two_views``, the magnitude shared by all
    views of an image."""
    magnitude = boost_magnitude(strength, spec)
    repeated = None if magnitude is None else torch.cat([magnitude] * copies)
    return boost_views(views, torch.cat([strength] * copies), spec, repeated)
