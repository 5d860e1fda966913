"""``float32_only``: autocast off inside a function, for losses and weights.

Under bf16 autocast a loss's matmuls and softmaxes would run in bf16 again; the losses
and the re-balancing weights compute in float32 whatever their caller runs under. A leaf
module (torch only), so the pure maths of ``fassl.losses`` needs nothing else.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch

_P = ParamSpec("_P")
_R = TypeVar("_R")


def float32_only(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` with autocast off on the devices of its tensor arguments.

    For losses and weights: under bf16 autocast their matmuls would run in bf16 again.
    """

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        devices = {a.device.type for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
        with contextlib.ExitStack() as stack:
            for device in devices:
                stack.enter_context(torch.autocast(device, enabled=False))
            return fn(*args, **kwargs)

    return wrapper
