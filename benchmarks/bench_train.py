"""Training throughput of one method step: fp32 vs bf16 autocast, channels_last or not.

Prints a table and saves benchmarks/results/train_<device>.json. Speeds are images per
second through the training step (each image gives two views); compare the ratios,
which are measured in the same run on the same machine.

    python benchmarks/bench_train.py [--method simclr] [--width 32] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from fassl.config import load_config
from fassl.data.augment import TwoViewAugment
from fassl.methods import build_method
from fassl.runtime import cpu_has_bf16_units
from fassl.train.optim import build_optimizer


def measure(
    method_name: str,
    width: int,
    batch: int,
    device: torch.device,
    bf16: bool,
    channels_last: bool,
    steps: int,
) -> float:
    cfg = load_config(None, [f"model.width={width}", f"optim.batch_size={batch}"])
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    method = build_method(cfg, method_name).to(device, memory_format=fmt)
    opt = build_optimizer(method, cfg.optim)
    aug = TwoViewAugment(cfg.augment, 32, (0.5,) * 3, (0.25,) * 3).to(device)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)

    def step() -> None:
        v1, v2 = aug(images)
        v1, v2 = v1.contiguous(memory_format=fmt), v2.contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = method(v1, v2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.on_step_end(0, 10)

    for _ in range(2):  # warm-up: oneDNN / cuDNN pick and compile kernels here
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows: dict[str, float] = {}
    # Two rounds in opposite orders; the better of the two counts (less noise from the
    # machine's other work).
    combos = [(bf16, cl) for bf16 in (False, True) for cl in (False, True)]
    for order in (combos, combos[::-1]):
        for bf16, cl in order:
            name = f"{'bf16' if bf16 else 'fp32'}{' channels_last' if cl else ''}"
            speed = measure(args.method, args.width, args.batch, device, bf16, cl, args.steps)
            rows[name] = max(rows.get(name, 0.0), speed)
            print(f"{name:>22}: {speed:8.1f} img/s")
    base = rows["fp32"]
    result = {
        "what": "training-step images/s (two views each), same run",
        "method": args.method,
        "width": args.width,
        "batch": args.batch,
        "device": str(device),
        "cpu_bf16_units": cpu_has_bf16_units(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "images_per_s": rows,
        "speedup_over_fp32": {k: v / base for k, v in rows.items()},
    }
    out = Path(__file__).parent / "results" / f"train_{device.type}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["speedup_over_fp32"], indent=2))


if __name__ == "__main__":
    main()
