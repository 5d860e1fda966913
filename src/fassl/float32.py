"""``float32_only``: autocast off inside a function, for losses and weights.

Under bf16 autocast a loss's matmuls and softmaxes would run in bf16 again; the losses
and the re-balancing weights compute in float32 whatever their caller runs under. A leaf
module (torch only), so the pure maths of ``fassl.losses`` needs nothing else.

Everything here traces under ``torch.compile`` without a graph break: plain
``torch.autocast`` contexts entered directly (dynamo does not trace ``ExitStack``).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import torch

_P = ParamSpec("_P")
_R = TypeVar("_R")


def autocast_off(device_type: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast switched off on ``device_type``; nothing to switch off on a device type
    without autocast (``meta``, where the tests trace a step)."""
    if not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def _device_types(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, ...]:
    """The device types of the tensor arguments, each once, in argument order."""
    types: list[str] = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor) and a.device.type not in types:
            types.append(a.device.type)
    return tuple(types)


def _call_without_autocast(
    fn: Callable[..., _R], devices: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> _R:
    # One nested ``with`` per device type (almost always one): no ExitStack to break on.
    if not devices:
        return fn(*args, **kwargs)
    with autocast_off(devices[0]):
        return _call_without_autocast(fn, devices[1:], args, kwargs)


def float32_only(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` with autocast off on the devices of its tensor arguments.

    For losses and weights: under bf16 autocast their matmuls would run in bf16 again.
    """

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        return _call_without_autocast(fn, _device_types(args, kwargs), args, kwargs)

    return wrapper
