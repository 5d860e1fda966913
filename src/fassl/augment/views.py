"""Multi-view augmentation of a whole uint8 batch on the training device.

A method declares the views it takes (``ViewSpec``: global crops, local crops of another
size and scale, per-view settings such as BYOL's blur / solarize split); ``ViewAugment``
makes them. The default is today's pair of identical global views (SimCLR / SDCLR recipe):
RandomResizedCrop + horizontal flip, ColorJitter with probability, RandomGrayscale and an
optional Gaussian blur, drawn independently for every image and every view.

Views of one size and crop scale are drawn in one batched call (a per-view setting is a
per-image probability inside it), so the default pair draws its random numbers exactly as
the two-view pipeline always has. Views of different sizes cannot be one batch: a method
runs one forward per resolution (``fassl.methods.base.multi_view_forward``).

Why not kornia.augmentation: benchmarks/bench_augment.py times both on the same batch
(256 images at 32x32; results in benchmarks/results/augment.json), and this module was
faster in every component, about 3-5x overall on a 2-core CPU and 6-20x on an H200.
kornia's ColorJitter converts to HSV and back for the hue and runs its four jitters as
separate passes with per-call overhead. Here every jitter is a per-image 3x3 colour
matrix (hue as a rotation in YIQ space), so the whole jitter is four batched matrix
products with a clamp after each, in a random order per image like torchvision; the
crop and flip are one affine ``grid_sample``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fassl.augment.boost import BoostSpec, boost_copies
from fassl.augment.colour import (
    GRAY_WEIGHTS,
    blur_kernel_size,
    device_constant,
    gaussian_blur,
    hue_matrices,
)
from fassl.config import AugmentConfig
from fassl.float32 import autocast_off

RATIO = (3.0 / 4.0, 4.0 / 3.0)  # aspect-ratio range of RandomResizedCrop
CROP_ATTEMPTS = 10  # torchvision's tries before falling back to the whole image
BLUR_SIGMA = (0.1, 2.0)  # SimCLR's blur
SOLARIZE_THRESHOLD = 0.5  # BYOL's: pixels at or above it are inverted
# A probability per image (a per-view setting inside a batched call) or one for all.
Probability = float | torch.Tensor


@dataclass(frozen=True)
class View:
    """Settings of one view that differ from ``augment``'s, for asymmetric views (BYOL's
    first view always blurred and never solarized, its second rarely blurred, sometimes
    solarized). None keeps the config's value."""

    blur_p: float | None = None
    solarize_p: float = 0.0


@dataclass(frozen=True)
class ViewSpec:
    """The views a method takes, in the order its ``forward`` receives them: the global
    crops, then the local crops.

    ``global_size`` / ``local_size``: the side of a crop in pixels (None for the globals:
    the images' side). ``global_scale`` / ``local_scale``: the crop's area range as a
    share of the image (None for the globals: ``(augment.crop_scale_min, 1)``).
    ``per_view``: settings of view i (globals first); views beyond it use the config's.
    The default is two identical global views, the common recipe. BCL's boost applies to
    the global views only.
    """

    global_crops: int = 2
    global_size: int | None = None
    global_scale: tuple[float, float] | None = None
    local_crops: int = 0
    local_size: int | None = None
    local_scale: tuple[float, float] = (0.05, 0.4)  # DINO's
    per_view: tuple[View, ...] = ()

    def __post_init__(self) -> None:
        if self.global_crops < 1 or self.local_crops < 0:
            raise ValueError(
                f"a view spec needs at least one global crop and no negative count, got "
                f"{self.global_crops} global and {self.local_crops} local"
            )
        if self.local_crops and self.local_size is None:
            raise ValueError(f"{self.local_crops} local crops need a local_size")
        for what, size in (("global_size", self.global_size), ("local_size", self.local_size)):
            if size is not None and size < 1:
                raise ValueError(f"{what} must be at least 1 pixel, got {size}")
        for what, scale in (("global_scale", self.global_scale), ("local_scale", self.local_scale)):
            if scale is not None and not 0.0 < scale[0] <= scale[1] <= 1.0:
                raise ValueError(f"{what} must satisfy 0 < low <= high <= 1, got {scale}")
        if len(self.per_view) > self.count:
            raise ValueError(f"per_view sets {len(self.per_view)} views of {self.count}")
        for i, view in enumerate(self.per_view):
            for what, p in (("blur_p", view.blur_p), ("solarize_p", view.solarize_p)):
                if p is not None and not 0.0 <= p <= 1.0:
                    raise ValueError(f"per_view[{i}].{what} must be in [0, 1], got {p}")

    @property
    def count(self) -> int:
        """How many views a batch becomes."""
        return self.global_crops + self.local_crops

    def view(self, i: int) -> View:
        """The settings of view ``i`` (the config's where ``per_view`` sets none)."""
        return self.per_view[i] if i < len(self.per_view) else View()


TWO_VIEWS = ViewSpec()  # the common recipe: two identical global views


@dataclass(frozen=True)
class CropGroup:
    """Views of one size and crop scale: drawn in one batched call."""

    first: int  # index of its first view
    count: int
    size: int
    scale: tuple[float, float]
    blur_kernel: int


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


def crop_boxes(
    n: int, height: int, width: int, scale: tuple[float, float], device: torch.device
) -> torch.Tensor:
    """RandomResizedCrop boxes (top, left, h, w) in pixels, torchvision's sampling, batched.

    Ten (area, log-ratio) tries per image; the first that fits is kept, else the whole
    image (clamped to the ratio range), as in ``RandomResizedCrop.get_params``.
    """
    area = height * width * _uniform(n * CROP_ATTEMPTS, *scale, device).view(n, -1)
    log_r = _uniform(n * CROP_ATTEMPTS, math.log(RATIO[0]), math.log(RATIO[1]), device)
    aspect = log_r.view(n, -1).exp()
    w = (area * aspect).sqrt().round()
    h = (area / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    fallback_h, fallback_w = _fallback_size(height, width)
    found = fits.any(dim=1)
    h = torch.where(found, h, torch.full_like(h, fallback_h))
    w = torch.where(found, w, torch.full_like(w, fallback_w))
    top = (torch.rand(n, device=device) * (height - h + 1)).floor()
    left = (torch.rand(n, device=device) * (width - w + 1)).floor()
    return torch.stack([top, left, h, w], dim=1)


def _fallback_size(height: int, width: int) -> tuple[float, float]:
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        return float(round(width / RATIO[0])), float(width)
    if in_ratio > RATIO[1]:
        return float(height), float(round(height * RATIO[1]))
    return float(height), float(width)


def crop_flip(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Resize each box of ``x`` to size x size (bilinear), mirrored where ``flip``.

    One affine grid per image maps the output's [-1, 1] square onto the box, so a box that
    is the whole image reproduces the input exactly (pixel centres land on pixel centres).
    Sample points are clamped to the box's outer pixel centres, so pixels outside the box
    never leak in: the same as cropping first and then resizing (without antialiasing).
    """
    n, c, height, width = x.shape
    top, left, h, w = boxes.to(x.dtype).unbind(dim=1)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = torch.where(flip, -w, w) / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    low = torch.stack([(2 * left + 1) / width, (2 * top + 1) / height], dim=1) - 1
    high = torch.stack([(2 * (left + w) - 1) / width, (2 * (top + h) - 1) / height], dim=1) - 1
    grid = torch.maximum(torch.minimum(grid, high.view(n, 1, 1, 2)), low.view(n, 1, 1, 2))
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray_matrix(device: torch.device) -> torch.Tensor:
    """(3, 3): every output channel is the luma of the input (a shared constant: read only)."""
    return device_constant((GRAY_WEIGHTS,) * 3, device)


def _factor(n: int, strength: float, device: torch.device) -> torch.Tensor:
    """torchvision's ColorJitter factor: uniform in [max(0, 1 - s), 1 + s]."""
    return _uniform(n, max(0.0, 1.0 - strength), 1.0 + strength, device)


def color_jitter(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """ColorJitter with probability ``cfg.jitter_p``, in a random order per image.

    Brightness, saturation and hue are linear colour maps; contrast blends with the
    image's mean luma (a per-image offset). Values are clamped to [0, 1] after each step.
    """
    n, dev = x.shape[0], x.device
    eye = torch.eye(3, device=dev).expand(n, 3, 3)
    gray = _gray_matrix(dev)
    apply = torch.rand(n, device=dev) < cfg.jitter_p
    bright = _factor(n, cfg.brightness, dev).view(n, 1, 1)
    contrast = _factor(n, cfg.contrast, dev)
    sat = _factor(n, cfg.saturation, dev).view(n, 1, 1)
    hue = _uniform(n, -cfg.hue, cfg.hue, dev) * (2 * math.pi)
    order = torch.rand(n, 4, device=dev).argsort(dim=1)  # per-image order of the four ops
    ops = torch.stack(
        [
            bright * eye,
            contrast.view(n, 1, 1) * eye,
            sat * eye + (1 - sat) * gray,
            hue_matrices(hue),
        ],
        dim=1,
    )  # (n, 4, 3, 3)
    ops = torch.where(apply.view(n, 1, 1, 1), ops, eye.unsqueeze(1))
    gray_w = device_constant(GRAY_WEIGHTS, dev)
    flat = x.flatten(2)  # (n, 3, H*W)
    for step in range(4):
        op = order[:, step]
        matrix = ops[torch.arange(n, device=dev), op]
        mean_luma = torch.einsum("c,nc->n", gray_w, flat.mean(dim=2))
        # times the mask rather than where(..., 0.0): no scalar tensor made per step
        offset = (1 - contrast) * mean_luma * (apply & (op == 1))
        flat = torch.bmm(matrix, flat).add_(offset.view(n, 1, 1)).clamp_(0, 1)
    return flat.view_as(x)


def random_grayscale(x: torch.Tensor, p: float) -> torch.Tensor:
    """RandomGrayscale: the luma in all three channels, for a share ``p`` of the images."""
    pick = torch.rand(x.shape[0], device=x.device) < p
    luma = torch.einsum("c,nchw->nhw", device_constant(GRAY_WEIGHTS, x.device), x)
    return torch.where(pick.view(-1, 1, 1, 1), luma.unsqueeze(1).expand_as(x), x)


def random_blur(x: torch.Tensor, p: Probability, kernel_size: int) -> torch.Tensor:
    """Gaussian blur (sigma uniform in [0.1, 2]) for a share ``p`` of the images (one
    probability, or one per image)."""
    n, dev = x.shape[0], x.device
    pick = torch.rand(n, device=dev) < p
    sigma = _uniform(n, *BLUR_SIGMA, dev)
    return torch.where(pick.view(-1, 1, 1, 1), gaussian_blur(x, sigma, kernel_size), x)


def random_solarize(x: torch.Tensor, p: Probability) -> torch.Tensor:
    """Solarization (pixels at or above 0.5 inverted, BYOL's) for a share ``p`` of the
    images (one probability, or one per image)."""
    pick = torch.rand(x.shape[0], device=x.device) < p
    solarized = torch.where(x >= SOLARIZE_THRESHOLD, 1.0 - x, x)
    return torch.where(pick.view(-1, 1, 1, 1), solarized, x)


class ViewAugment(nn.Module):
    """uint8 (B, 3, H, W) on the device -> the views of ``spec``, independently augmented
    and normalised: a list, global views first.

    Runs in float32 even inside ``torch.autocast``; random draws use the device's default
    generator, so ``torch.manual_seed`` makes it repeatable.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        cfg: AugmentConfig,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        boost: BoostSpec | None = None,
        spec: ViewSpec = TWO_VIEWS,
    ) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.boost = boost  # BCL's extra per-image augmentation, after the common one
        self.image_size = image_size
        size = spec.global_size or image_size
        scale = spec.global_scale or (cfg.crop_scale_min, 1.0)
        self.groups = [CropGroup(0, spec.global_crops, size, scale, blur_kernel_size(size))]
        if spec.local_crops:
            size = spec.local_size or image_size  # always set when there are local crops
            self.groups.append(
                CropGroup(
                    spec.global_crops,
                    spec.local_crops,
                    size,
                    spec.local_scale,
                    blur_kernel_size(size),
                )
            )
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def _probability(
        self, group: CropGroup, n: int, setting: str, device: torch.device
    ) -> Probability:
        """``setting`` (blur_p / solarize_p) of the group's views: one float when they
        share it (the random draws of the common recipe), else one per image."""
        default = getattr(self.cfg, setting, 0.0)  # the config has no solarize: 0
        values = []
        for i in range(group.first, group.first + group.count):
            own = getattr(self.spec.view(i), setting)
            values.append(default if own is None else own)
        if all(v == values[0] for v in values):
            return values[0]
        return torch.cat([torch.full((n,), v, device=device) for v in values])

    def augment(
        self,
        x: torch.Tensor,
        size: int | None = None,
        scale: tuple[float, float] | None = None,
        blur_p: Probability | None = None,
        solarize_p: Probability = 0.0,
        blur_kernel: int | None = None,
    ) -> torch.Tensor:
        """One random view of every image: float [0, 1] in, float [0, 1] out (unnormalised);
        the size, scale and blur are the config's where not given."""
        cfg, n, dev = self.cfg, x.shape[0], x.device
        size = size or self.image_size
        scale = scale or (cfg.crop_scale_min, 1.0)
        blur_p = cfg.blur_p if blur_p is None else blur_p
        boxes = crop_boxes(n, x.shape[2], x.shape[3], scale, dev)
        flip = torch.rand(n, device=dev) < cfg.flip_p
        x = crop_flip(x, boxes, flip, size)
        if cfg.jitter_p > 0:
            x = color_jitter(x, cfg)
        if cfg.grayscale_p > 0:
            x = random_grayscale(x, cfg.grayscale_p)
        if isinstance(blur_p, torch.Tensor) or blur_p > 0:
            x = random_blur(x, blur_p, blur_kernel or blur_kernel_size(size))
        if isinstance(solarize_p, torch.Tensor) or solarize_p > 0:
            x = random_solarize(x, solarize_p)
        return x

    def forward(
        self, images: torch.Tensor, strength: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """The views of every image, ``spec.count`` tensors (N, 3, size, size); with
        ``strength`` (N,) and a ``boost``, each global view is then augmented once more at
        its image's strength (``fassl.augment.boost``)."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"expected uint8 (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        views: list[torch.Tensor] = []
        with autocast_off(images.device.type):
            x = images.float().div_(255.0)
            n = x.shape[0]
            for group in self.groups:
                # one call draws every view of the group independently
                out = self.augment(
                    torch.cat([x] * group.count),
                    group.size,
                    group.scale,
                    self._probability(group, n, "blur_p", x.device),
                    self._probability(group, n, "solarize_p", x.device),
                    group.blur_kernel,
                )
                if group.first == 0 and strength is not None and self.boost is not None:
                    out = boost_copies(out, strength, self.boost, group.count)
                out = (out - self.mean.to(x.device)) / self.std.to(x.device)
                views.extend(out.chunk(group.count))
        return views
