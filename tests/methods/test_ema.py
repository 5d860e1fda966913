"""The teacher's EMA paired once: bit-identical to a per-tensor lerp, step after step,
and still right after ``.to()``, a ``load_state_dict(assign=True)`` or a memory-format
change replaced the tensors it paired."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn

from fassl.methods.momentum import EmaPairs


def net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(5), nn.BatchNorm1d(5)
    )


def pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    student = net()
    student(torch.randn(4, 3, 6, 6))  # materialises the lazy layer, moves the statistics
    teacher = copy.deepcopy(student)
    with torch.no_grad():  # the teacher somewhere else than the student
        for p in teacher.parameters():
            p.mul_(0.5).add_(0.25)
    return teacher, student


def train_step(student: nn.Module, seed: int) -> None:
    """Moves the student's parameters and running statistics, as a step would."""
    torch.manual_seed(seed)
    student(torch.randn(4, 3, 6, 6, dtype=next(student.parameters()).dtype))
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.1)


@torch.no_grad()
def reference(teacher: nn.Module, student: nn.Module, tau: float) -> dict[str, torch.Tensor]:
    """The update one tensor at a time, by name, on copies: what the teacher must become."""
    out = {k: v.clone() for k, v in teacher.state_dict().items()}
    params = dict(student.named_parameters(remove_duplicate=False))  # tied: both names
    buffers = dict(student.named_buffers())
    for name, value in out.items():
        if name in params:
            value.lerp_(params[name].to(value.dtype), 1.0 - tau)
        else:
            value.copy_(buffers[name])
    return out


def assert_bit_identical(teacher: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    for name, value in teacher.state_dict().items():
        assert value.dtype == expected[name].dtype, name
        assert torch.equal(value, expected[name]), name


@pytest.mark.parametrize("taus", [(0.99, 0.996, 0.5), (0.0, 1.0, 0.3)])
def test_the_update_is_a_per_tensor_lerp_bit_for_bit(taus: tuple[float, ...]) -> None:
    teacher, student = pair()
    pairs = EmaPairs(teacher, student)
    for i, tau in enumerate(taus):
        train_step(student, i)
        expected = reference(teacher, student, tau)
        pairs.update(tau)
        assert_bit_identical(teacher, expected)


def _to_double(m: nn.Module) -> None:
    m.double()


def _channels_last(m: nn.Module) -> None:
    m.to(memory_format=torch.channels_last)


def _assign_loaded(m: nn.Module) -> None:
    m.load_state_dict({k: v.clone() for k, v in m.state_dict().items()}, assign=True)


def _overwrite_on_to(m: nn.Module) -> None:
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        m.double()  # new Parameter objects, not .data swapped in
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(False)


CHANGES: dict[str, Callable[[nn.Module], None]] = {
    "to_double": _to_double,
    "channels_last": _channels_last,
    "load_state_dict_assign": _assign_loaded,
    "new_parameters_on_to": _overwrite_on_to,
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_the_pairing_follows_tensors_that_were_replaced(change: str) -> None:
    teacher, student = pair()
    pairs = EmaPairs(teacher, student)
    train_step(student, 0)
    pairs.update(0.9)
    held = {id(t) for t in [*teacher.parameters(), *teacher.buffers()]}
    CHANGES[change](teacher)
    CHANGES[change](student)
    if change != "channels_last":  # a layout change keeps every tensor object
        assert held != {id(t) for t in [*teacher.parameters(), *teacher.buffers()]}
    for i, tau in enumerate((0.8, 0.7)):
        train_step(student, i + 1)
        expected = reference(teacher, student, tau)
        pairs.update(tau)
        assert_bit_identical(teacher, expected)  # the module's tensors, not stale ones


def test_a_structure_mismatch_raises_once_at_pairing() -> None:
    teacher, student = pair()
    with pytest.raises(
        ValueError, match=r"parameters differ; only in the student: \['4\.bias', '4\.weight'\]"
    ):
        EmaPairs(nn.Sequential(*list(teacher)[:4]), student)
    other = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(ValueError, match=r"parameter '0\.weight' has shape \(4, 3\) in the teac"):
        EmaPairs(other, nn.Sequential(nn.Linear(4, 4)))
    pairs = EmaPairs(teacher, student)
    with pytest.raises(ValueError, match="tau must be in"):
        pairs.update(1.5)


def test_a_shared_parameter_is_updated_once() -> None:
    def tied() -> nn.Module:
        m = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
        m[1].weight = m[0].weight
        return m

    torch.manual_seed(0)
    teacher, student = tied(), tied()
    expected = reference(teacher, student, 0.5)  # state_dict lists the tied weight twice
    EmaPairs(teacher, student).update(0.5)
    assert_bit_identical(teacher, expected)
