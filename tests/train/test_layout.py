"""The memory-layout rule and native-bf16 detection, on injected CPU flags, and a
gradient check that runs oneDNN's AVX2 kernels whatever this machine has."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fassl.models import build_backbone
from fassl.runtime import (
    SAFE_POINTWISE_CHANNELS,
    Runtime,
    min_strided_pointwise_channels,
    native_bf16,
    resolve_channels_last,
)

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl"}
AVX512_BF16 = AVX512 | {"avx512_bf16"}
AMX = AVX512_BF16 | {"amx_bf16", "amx_tile"}
# The environment that makes a newer CPU run the AVX2 kernels (and ATen's AVX2 code).
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


@pytest.mark.parametrize(
    ("flags", "onednn", "aten", "expected"),
    [
        (AVX2, "", "AVX2", False),
        (AVX512, "", "AVX512", False),
        (AVX512_BF16, "", "AVX512", True),
        (AMX, "", "AVX512", True),
        (AMX, "AVX2", "AVX2", False),  # capped to the AVX2 kernels: bf16 is emulated
        (AMX, "AVX512_CORE", "AVX512", False),  # oneDNN below its bf16 kernels
        (AMX, "AVX512_CORE_AMX", "AVX512", True),
        (AMX, "", "AVX2", False),  # ATen capped alone
        (frozenset(), "", "DEFAULT", False),  # no /proc/cpuinfo
    ],
)
def test_native_bf16_reads_flags_and_caps(flags, onednn, aten, expected) -> None:
    assert native_bf16(flags, onednn, aten) is expected


def test_pointwise_channels_of_the_resnets() -> None:
    # ResNet-18's first strided 1x1 conv is layer2's downsample: width input channels.
    for width in (4, 8, 16, 64):
        assert min_strided_pointwise_channels(build_backbone("resnet18", width)) == width
    # ResNet-50 (v1.5, stride on the 3x3): downsample of layer2 reads 4 x width channels.
    assert min_strided_pointwise_channels(build_backbone("resnet50", 4)) == 16
    assert min_strided_pointwise_channels(torch.nn.Linear(3, 3)) > 1000  # none


# ids from sorted flags: a frozenset's order changes with the hash seed (pytest-xdist's
# workers must collect the same ids)
@pytest.mark.parametrize(
    "flags", [AVX2, AVX512, AVX512_BF16, AMX], ids=lambda f: "-".join(sorted(f))
)
@pytest.mark.parametrize("width", [4, 8, 16, 32])
def test_layout_rule_on_every_cpu(flags, width) -> None:
    """The answer must not depend on the CPU's flags (the oneDNN fault depends on the
    machine) and must never put a small strided 1x1 conv in channels_last on the CPU."""
    del flags  # the rule reads none: the same answer for AVX2, AVX-512 and AMX machines
    channels = min_strided_pointwise_channels(build_backbone("resnet18", width))
    safe = width >= SAFE_POINTWISE_CHANNELS
    assert resolve_channels_last("auto", "cpu", channels) is safe
    assert resolve_channels_last("channels_last", "cpu", channels) is safe
    assert resolve_channels_last("contiguous", "cpu", channels) is False
    assert resolve_channels_last("auto", "cuda", channels) is True
    assert resolve_channels_last("contiguous", "cuda", channels) is False


def test_explicit_channels_last_on_a_small_model_warns_once(capfd) -> None:
    net = build_backbone("resnet18", 6)
    rt = Runtime(torch.device("cpu"), None, "channels_last")
    assert rt.memory_format_for(net) == torch.contiguous_format
    assert rt.memory_format_for(net) == torch.contiguous_format
    err = capfd.readouterr().err
    assert err.count("channels_last ignored") == 1
    assert "6 input channels" in err
    assert Runtime(torch.device("cpu")).memory_format_for(build_backbone("resnet18", 16)) == (
        torch.channels_last
    )


def test_unknown_layout_is_an_error() -> None:
    with pytest.raises(ValueError, match="memory format"):
        resolve_channels_last("nhwc", "cpu", 64)


_GRADIENT_CHECK = textwrap.dedent(
    """
    import sys, torch
    from fassl.models import build_backbone
    from fassl.runtime import Runtime
    width = int(sys.argv[1])
    torch.manual_seed(0)
    ref_net = build_backbone("resnet18", width)
    x = torch.randn(16, 3, 16, 16)
    ref_net(x).sum().backward()
    ref = {k: p.grad.clone() for k, p in ref_net.named_parameters()}
    for setting in ("auto", "channels_last"):
        fmt = Runtime(torch.device("cpu"), None, setting).memory_format_for(ref_net)
        torch.manual_seed(0)
        net = build_backbone("resnet18", width).to(memory_format=fmt)
        for _ in range(10):  # the fault shows within a few steps
            net.zero_grad()
            net(x.contiguous(memory_format=fmt)).sum().backward()
            for k, p in net.named_parameters():
                # summation order alone moves a BatchNorm bias's gradient by up to 0.6 %
                err = ((p.grad - ref[k]).norm() / ref[k].norm().clamp_min(1e-12)).item()
                if err > 2e-2:
                    sys.exit(f"{setting} ({fmt}): gradient of {k} differs by {err:.2%}")
    print("same gradients", width, fmt)
    """
)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("width", [4, 8, 16])
@pytest.mark.slow
def test_resolved_layout_gives_contiguous_gradients_on_avx2_kernels(width, threads) -> None:
    """In a subprocess with the AVX2 kernels (a crash fails the test, not the suite):
    one thread corrupts the heap, two give wrong weight gradients when the rule breaks."""
    env = os.environ | AVX2_ENV | {"OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(
        [sys.executable, "-c", _GRADIENT_CHECK, str(width)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stdout}{proc.stderr[-2000:]}"
    assert "same gradients" in proc.stdout
