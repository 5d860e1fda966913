"""Which memory layout trains faster on this CPU: channels_last or contiguous (NCHW).

Times forward + backward of the ResNet-18 backbone (the CIFAR stem) on a batch of 32x32
images for each width, precision (fp32, and bf16 autocast) and layout, in one run on one
machine, so the layouts compare as ratios. ``train.memory_format=auto`` follows what
these numbers say (``fassl.runtime.resolve_channels_last``).

To measure the AVX2 kernels on a newer CPU, cap oneDNN's and ATen's instruction sets
before torch loads (the result records which kernels ran):

    python benchmarks/bench_layout.py --out benchmarks/results/layout_cpu.json
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_layout.py \\
        --out benchmarks/results/layout_cpu_avx2.json

Widths whose strided 1x1 convolutions have fewer than 16 input channels are measured in
the contiguous layout only: channels_last reaches a oneDNN kernel that corrupts memory
there (docs/RESULTS.md, section 10).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fassl.models import build_backbone
from fassl.runtime import SAFE_POINTWISE_CHANNELS, cpu_flags, min_strided_pointwise_channels


def layout_rates(
    width: int, precision: str, batch: int, repeats: int, rounds: int
) -> dict[str, float | None]:
    """img/s per layout: the median over ``rounds`` of ``repeats`` steps, the layouts
    taking turns within each round so that a busy spell of the machine hits both."""
    dtype = torch.bfloat16 if precision == "bf16" else None
    steps = {}
    for layout in ("contiguous", "channels_last"):
        net = build_backbone("resnet18", width, cifar_stem=True)
        if (
            layout == "channels_last"
            and min_strided_pointwise_channels(net) < SAFE_POINTWISE_CHANNELS
        ):
            continue  # unsafe on AVX2 oneDNN: never measured, never chosen
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        steps[layout] = _step(net.to(memory_format=fmt), batch, fmt, dtype)
        for _ in range(2):  # warm-up: kernel selection
            steps[layout]()
    times: dict[str, list[float]] = {layout: [] for layout in steps}
    for _ in range(rounds):
        for layout, step in steps.items():
            start = time.perf_counter()
            for _ in range(repeats):
                step()
            times[layout].append(time.perf_counter() - start)
    rates: dict[str, float | None] = {"contiguous": None, "channels_last": None}
    for layout, seconds in times.items():
        rates[layout] = batch * repeats / statistics.median(seconds)
    return rates


def _step(
    net: torch.nn.Module, batch: int, fmt: torch.memory_format, dtype: torch.dtype | None
) -> Callable[[], None]:
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = net(x)
        out.float().sum().backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="16,32,64")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--out", default="benchmarks/results/layout_cpu.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = cpu_flags()
    rows = []
    for width in (int(w) for w in args.widths.split(",")):
        for precision in args.precisions.split(","):
            rate = layout_rates(width, precision, args.batch, args.repeats, args.rounds)
            ratio = (
                rate["channels_last"] / rate["contiguous"]
                if rate["channels_last"] and rate["contiguous"]
                else None
            )
            rows.append(
                {"width": width, "precision": precision, "img_per_s": rate, "cl_over_nchw": ratio}
            )
            shown = ", ".join(f"{k} {v:.1f}" if v else f"{k} -" for k, v in rate.items())
            print(f"width {width:3d} {precision}: {shown} img/s; ratio {ratio}")
    payload = {
        "what": "ResNet-18 backbone forward + backward img/s per layout, same run",
        "batch": args.batch,
        "steps": f"median of {args.rounds} rounds of {args.repeats} steps, layouts in turn",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "machine": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "flags": sorted(f for f in flags if f.startswith(("avx", "amx"))),
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
