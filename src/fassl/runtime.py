"""Where and how tensors run: the device, the process group, the precision and the layout.

The ground floor of the package: training, evaluation and analysis all take a
``Runtime`` instead of passing a device and an autocast dtype by hand, and enter
``Runtime.autocast()`` for the one autocast context of the project (losses switch it off
inside themselves, ``fassl.float32``). It also holds the memory-layout rule and reads the
CPU's flags, so precision and layout are decided in one place for every device.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fassl import distributed
from fassl.config import TrainConfig
from fassl.errors import DeviceUnavailable

_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
PRECISIONS = ("auto", "bf16", "fp32")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
# oneDNN's ONEDNN_MAX_CPU_ISA values that still reach its bf16 kernels (ALL = no cap).
_BF16_ISAS = ("ALL", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10")
# Below this many input channels, oneDNN's AVX2 kernel for a strided 1x1 convolution in
# channels_last (NHWC) writes past its workspace: heap corruption, hangs, or wrong weight
# gradients without an error (uxlfoundation/oneDNN #6035; 16 = the AVX-512 block, so the
# margin covers the AVX2 block of 8 with room). docs/RESULTS.md section 10.
SAFE_POINTWISE_CHANNELS = 16


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none: not Linux)."""
    for line in _cpuinfo_lines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def native_bf16(flags: frozenset[str], onednn_isa: str, aten_capability: str) -> bool:
    """Whether bf16 matmuls run on native units: the CPU has AMX or AVX512-BF16 and
    neither oneDNN (``ONEDNN_MAX_CPU_ISA``, empty = no cap) nor ATen (its CPU
    capability, ``AVX2`` under ``ATEN_CPU_CAPABILITY=avx2``) is capped below them.

    Without such units bf16 autocast is emulated: 10-30x slower than fp32
    (docs/RESULTS.md section 10), so ``auto`` precision is fp32 there.
    """
    if not any(flag in flags for flag in _BF16_CPU_FLAGS):
        return False
    cap = onednn_isa.strip().upper()
    if cap and not cap.startswith(_BF16_ISAS):
        return False
    return aten_capability.upper().startswith("AVX512")


def cpu_has_bf16_units() -> bool:
    """``native_bf16`` for this machine and process (flags, oneDNN and ATen caps)."""
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", ""))
    return native_bf16(cpu_flags(), onednn, torch.backends.cpu.get_cpu_capability())


def min_strided_pointwise_channels(model: nn.Module) -> int:
    """The fewest input channels of any strided 1x1 convolution in ``model`` (a large
    number when there is none)."""
    found = [
        m.in_channels
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and max(m.stride) > 1
    ]
    return min(found, default=1 << 30)


def resolve_channels_last(setting: str, device_type: str, pointwise_channels: int) -> bool:
    """The layout rule of ``train.memory_format``: True = channels_last.

    ``auto``: channels_last on CUDA, and on the CPU unless a strided 1x1 convolution has
    fewer than ``SAFE_POINTWISE_CHANNELS`` input channels (``pointwise_channels``, from
    ``min_strided_pointwise_channels``). On every CPU measured channels_last trained
    faster, fp32 and bf16, AVX2 and AVX-512 kernels alike (1.04-1.65x, docs/RESULTS.md
    section 10), so the only reason for contiguous is the unsafe kernel; the rule does
    not read the CPU's flags because the oneDNN fault depends on the machine.
    ``channels_last`` on such a model on the CPU is refused the same way, with a warning.
    """
    if setting not in MEMORY_FORMATS:
        raise ValueError(f"memory format must be one of {list(MEMORY_FORMATS)}, got {setting!r}")
    if setting == "contiguous":
        return False
    if device_type != "cpu":
        return setting == "channels_last" or device_type == "cuda"
    safe = pointwise_channels >= SAFE_POINTWISE_CHANNELS
    if setting == "channels_last" and not safe:
        _warn_unsafe_layout(pointwise_channels)
    return safe


@functools.cache
def _warn_unsafe_layout(channels: int) -> None:
    """Once per process and channel count, from rank 0 only (every rank has the model)."""
    if not distributed.is_main():
        return
    print(
        f"fassl: warning: train.memory_format=channels_last ignored: the model has a strided "
        f"1x1 convolution with {channels} input channels (< {SAFE_POINTWISE_CHANNELS}), where "
        "oneDNN's CPU kernel in channels_last can corrupt memory or weight gradients; "
        "training runs contiguous (train.memory_format=auto picks this itself)",
        file=sys.stderr,
    )


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
    """The device, the autocast dtype (None = fp32) and the memory-format setting
    (``train.memory_format``), resolved per model by ``memory_format_for``."""

    device: torch.device
    autocast_dtype: torch.dtype | None = None
    memory_format_setting: str = "auto"

    @classmethod
    def cpu(cls) -> Runtime:
        """fp32 on the CPU: what tests and small analyses use."""
        return cls(torch.device("cpu"))

    def memory_format_for(self, model: nn.Module) -> torch.memory_format:
        """The layout ``model`` trains and extracts features in (``resolve_channels_last``)."""
        pointwise = min_strided_pointwise_channels(model)
        if resolve_channels_last(self.memory_format_setting, self.device.type, pointwise):
            return torch.channels_last
        return torch.contiguous_format

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
    device: str = "auto", precision: str = "auto", memory_format: str = "auto"
) -> Runtime:
    """Pick the device, join torchrun's process group if there is one, choose precision.

    Commands that train call this first, before any lock or file is touched, so that
    every later step can tell rank 0 from the others; joining is done once per process.

    ``memory_format`` is ``train.memory_format`` (auto | channels_last | contiguous),
    resolved per model (``Runtime.memory_format_for``).
    """
    dev = resolve_device(device)
    distributed.init_from_env(dev.type)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(
            f"memory format must be one of {list(MEMORY_FORMATS)}, got {memory_format!r}"
        )
    return Runtime(dev, resolve_autocast(dev, precision), memory_format)


def runtime_for(train: TrainConfig) -> Runtime:
    """``setup_runtime`` with a run's ``train.*`` settings."""
    return setup_runtime(train.device, train.precision, train.memory_format)


def machine_lines() -> list[str]:
    """What this machine is and what ``auto`` resolves to here (``fassl info``, CI logs)."""
    model = next(
        (
            line.partition(":")[2].strip()
            for line in _cpuinfo_lines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    flags = cpu_flags()
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", ""))
    aten = torch.backends.cpu.get_cpu_capability()
    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return [
        f"cpu: {model}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads",
        f"cpu flags: {' '.join(shown) or 'none of avx2 avx512f avx512_bf16 amx_bf16'}",
        f"torch {torch.__version__}: CPU capability {aten}"
        + (f", ONEDNN_MAX_CPU_ISA={onednn}" if onednn else ""),
        f"cuda: {cuda}",
        f"model libraries: {library_versions()}",
        f"train.precision=auto on the CPU: {'bf16' if cpu_has_bf16_units() else 'fp32'}",
        f"train.memory_format=auto on the CPU: channels_last unless a strided 1x1 conv has "
        f"< {SAFE_POINTWISE_CHANNELS} input channels (then contiguous)",
    ]


def library_versions() -> str:
    """The installed versions of the optional model libraries (model.arch=timm:...), read
    from the package metadata without importing them."""
    found = []
    for name in ("timm", "torchvision"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
