"""Colour and blur primitives shared by the common augmentation and BCL's extra one.

Batched, per-image parameters, float images in [0, 1]: the hue rotation as a 3x3 matrix in
YIQ space, the luma weights, and a separable Gaussian blur with one sigma per image.
Their constant matrices are made once per device and dtype (``device_constant``), so an
augmentation step copies nothing from the host.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
RGB_TO_YIQ = (
    (0.299, 0.587, 0.114),
    (0.595716, -0.274453, -0.321263),
    (0.211456, -0.522591, 0.311135),
)
YIQ_TO_RGB = tuple(
    tuple(row) for row in torch.linalg.inv(torch.tensor(RGB_TO_YIQ, dtype=torch.float64)).tolist()
)

# hashable, so the cache can key on it
Constant = tuple[float, ...] | tuple[tuple[float, ...], ...]


@functools.cache
def _cached_constant(values: Constant, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False):  # a plain tensor, even if the first caller infers
        return torch.tensor(values, device=device, dtype=dtype)


def device_constant(
    values: Constant, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``torch.tensor(values)`` on ``device``, copied from the host once per (values,
    device, dtype): a step that reuses it waits for no host-to-device copy. Shared, so
    never modify it in place. ``values`` must be hashable (nested tuples)."""
    if torch.compiler.is_compiling():  # traced: a constant of the graph, no cache to mutate
        return torch.tensor(values, device=device, dtype=dtype)
    return _cached_constant(values, torch.device(device), dtype)


def hue_matrices(angle: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) RGB matrices that rotate the chroma (I, Q) plane of YIQ by ``angle``."""
    to_yiq = device_constant(RGB_TO_YIQ, angle.device)
    from_yiq = device_constant(YIQ_TO_RGB, angle.device)
    cos, sin = angle.cos(), angle.sin()
    turn = torch.zeros(angle.shape[0], 3, 3, device=angle.device)  # rotation minus identity
    turn[:, 1, 1], turn[:, 1, 2] = cos - 1, -sin
    turn[:, 2, 1], turn[:, 2, 2] = sin, cos - 1
    # identity + (the change): an angle of 0 gives exactly the identity, no rounding
    return torch.eye(3, device=angle.device) + from_yiq @ turn @ to_yiq


def blur_kernel_size(image_size: int) -> int:
    """SimCLR's 10% of the image side, odd, at least 3."""
    k = max(3, int(0.1 * image_size))
    return k if k % 2 else k + 1


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Every image blurred with its own ``sigma`` (N,): separable, one kernel per image via
    grouped convolutions, reflect padding."""
    n, c, h, w = x.shape
    half = kernel_size // 2
    taps = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (taps.view(1, -1) / sigma.view(-1, 1)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)
    flat = F.pad(x.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)
