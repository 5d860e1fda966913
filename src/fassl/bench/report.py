"""How ``fassl bench`` names the machine and writes its markdown table."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    name = model or platform.processor() or platform.machine()
    return f"{name}, {torch.get_num_threads()} threads"


COLUMNS = (
    ("method", "method", "{}"),
    ("width", "width", "{}"),
    ("batch", "batch", "{}"),
    ("compiled", "compiled", "{}"),
    ("warm-up s", "warmup_s", "{:.1f}"),
    ("step img/s", "step_img_s", "{:.1f}"),
    ("epoch img/s", "epoch_img_s", "{:.1f}"),
    ("recipe epoch img/s", "recipe_epoch_img_s", "{:.1f}"),
    ("recipe / step", "recipe_epoch_over_step", "{:.2f}"),
    ("GFLOP/img", "flop_per_image", "{:.2f}"),
    ("step MFU", "step_mfu", "{:.1%}"),
    ("recipe MFU", "recipe_epoch_mfu", "{:.1%}"),
    ("per-image library", "per_image_library", "{}"),
    ("step / per-image", "step_over_per_image", "{:.2f}"),
    ("host RSS GiB", "peak_host_rss_gib", "{:.2f}"),
    ("GPU GiB", "peak_gpu_gib", "{:.2f}"),
)


def _cell(value: Any, key: str, fmt: str) -> str:
    if value is None:
        return "n/a"
    return fmt.format(value / 1e9 if key == "flop_per_image" else value)


def markdown(result: dict[str, Any]) -> str:
    """The rows as a markdown table under a line naming the machine and the settings."""
    head = [label for label, _, _ in COLUMNS]
    lines = [
        f"`{result['command']}`",
        "",
        f"Device: {result['device_name']}; torch {result['torch']}; precision "
        f"{result['precision']}; {result['settings']['images']} images of "
        f"{result['settings']['image_size']}px; matmul peak "
        f"{result['rows'][0]['peak_matmul_flop_s'] / 1e12:.2f} TFLOP/s "
        f"({result['rows'][0]['matmul_dtype']}).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in result["rows"]:
        cells = [_cell(row.get(key), key, fmt) for _, key, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
