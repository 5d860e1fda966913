"""FLOP counting for ``fassl bench``'s model-FLOP utilisation.

``torch.utils.flop_counter`` (up to at least torch 2.14) counts the weight gradient of a
grouped convolution as if it had one group, so a depthwise 7x7 convolution (ConvNeXt)
counts its backward pass ``channels`` times too high and the MFU with it. This module
gives the counter a convolution-backward formula that holds for every ``groups``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


def conv_backward_flop(
    grad_out_shape: Sequence[int],
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    _groups: int,
    output_mask: Sequence[bool],
    out_shape: Any = None,
    **_: Any,
) -> int:
    """FLOP of ``aten.convolution_backward``: each gradient it computes costs what the
    forward convolution costs, 2 x (weight elements) x batch x (positions each weight
    element meets): the output's positions, or the input's for a transposed convolution.
    The weight's shape already holds ``in_channels / groups``, so groups need no term."""
    positions = math.prod(x_shape[2:] if transposed else grad_out_shape[2:])
    forward = 2 * math.prod(w_shape) * grad_out_shape[0] * positions
    return forward * sum(bool(wanted) for wanted in output_mask[:2])  # grad input, grad weight


def flop_counter() -> FlopCounterMode:
    """A quiet ``FlopCounterMode`` with the grouped-convolution backward formula."""
    return FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flop}
    )
