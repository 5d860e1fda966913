"""Where and how tensors run: the device, the process group and the precision.

The ground floor of the package: training, evaluation and analysis all take a
``Runtime`` instead of passing a device and an autocast dtype by hand, and enter
``Runtime.autocast()`` for the one autocast context of the project. Losses switch
autocast off inside themselves with ``float32_only`` (their softmaxes and weights are
computed in float32 whatever the caller runs under).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import torch

from fassl import distributed

if TYPE_CHECKING:
    from fassl.config import TrainConfig

_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
PRECISIONS = ("auto", "bf16", "fp32")


class DeviceUnavailable(RuntimeError):
    """The configured device does not exist on this machine."""


@functools.lru_cache(maxsize=1)
def cpu_has_bf16_units() -> bool:
    """True when the CPU multiplies bf16 matrices natively (AMX or AVX512-BF16).

    Without such units bf16 autocast on the CPU is emulated and slower than fp32.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux, or no procfs: assume no native bf16
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return any(flag in flags for flag in _BF16_CPU_FLAGS)
    return False


def resolve_autocast(device: torch.device | str, precision: str) -> torch.dtype | None:
    """Map a precision setting (auto | bf16 | fp32) to an autocast dtype, None = fp32."""
    device = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_bf16_units() else None
    return None


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; a bare ``cuda`` -> this process's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise DeviceUnavailable(f"train.device={name!r} is not a device name: {err}") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                f"train.device={name!r} asks for CUDA, but no CUDA device is available here; "
                "use train.device=cpu (or auto)"
            )
        if device.index is None:
            device = torch.device("cuda", distributed.local_rank())
        if device.index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"train.device={name!r}: only {torch.cuda.device_count()} CUDA devices here"
            )
        torch.cuda.set_device(device)
    return device


@dataclass(frozen=True)
class Runtime:
    """The device, the autocast dtype (None = fp32) and the training memory format."""

    device: torch.device
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def cpu(cls) -> Runtime:
        """fp32 on the CPU: what tests and small analyses use."""
        return cls(torch.device("cpu"))

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def synchronize(self) -> None:
        """Wait for the device's queued work (timings); a no-op on the CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The project's one autocast context; a no-op in fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def setup_runtime(
    device: str = "auto", precision: str = "auto", memory_format: str = ""
) -> Runtime:
    """Pick the device, join torchrun's process group if there is one, choose precision.

    ``memory_format`` is the training layout (``train.memory_format``); empty means
    channels_last on CUDA only.
    """
    dev = resolve_device(device)
    distributed.init_from_env(dev.type)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    channels_last = memory_format == "channels_last" or (not memory_format and dev.type == "cuda")
    return Runtime(dev, resolve_autocast(dev, precision), channels_last)


def runtime_for(train: TrainConfig) -> Runtime:
    """``setup_runtime`` with a run's ``train.*`` settings."""
    return setup_runtime(train.device, train.precision, train.memory_format)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (this process counts as not running: what it left
    behind in an earlier call is a leftover). For temporary files named by their writer."""
    if pid == os.getpid():
        return False  # this process is not writing it now: a leftover of an earlier call
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


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
