"""Two-view augmentation throughput on the CPU: kornia.augmentation vs fassl's ViewAugment.

Both pipelines do the same work (SDCLR's CIFAR recipe: RandomResizedCrop(scale 0.1..1),
flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale with p 0.2) on a uint8 batch,
producing two normalised views. Components are timed separately too, so the choice of
each part can be read off. Ratios are measured in the same run, on the same machine.

    python benchmarks/bench_augment.py [--batch 256] [--size 32] [--repeats 20]
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

import kornia
import kornia.augmentation as K
import torch
from torch import nn

from fassl.augment import views as A
from fassl.config import AugmentConfig

RESULTS = Path(__file__).parent / "results" / "augment.json"
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def kornia_pipeline(cfg: AugmentConfig, size: int) -> nn.Module:
    return nn.Sequential(
        K.RandomResizedCrop((size, size), scale=(cfg.crop_scale_min, 1.0), ratio=A.RATIO),
        K.RandomHorizontalFlip(p=cfg.flip_p),
        K.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, p=cfg.jitter_p),
        K.RandomGrayscale(p=cfg.grayscale_p),
        K.Normalize(torch.tensor(MEAN), torch.tensor(STD)),
    )


def kornia_two_views(cfg: AugmentConfig, size: int) -> Callable[[torch.Tensor], object]:
    pipe = kornia_pipeline(cfg, size)

    def run(images: torch.Tensor) -> object:
        x = images.float() / 255.0
        return pipe(torch.cat([x, x])).chunk(2)

    return run


def timed(
    fns: dict[str, Callable[[torch.Tensor], object]],
    inputs: dict[str, torch.Tensor],
    repeats: int,
) -> dict[str, float]:
    """Median seconds per call after warm-up; the cases take turns in every round, so a
    load change on a shared machine affects all of them alike."""
    for name, fn in fns.items():
        for _ in range(3):
            fn(inputs[name])
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(inputs[name])
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def cases(cfg: AugmentConfig, size: int) -> dict[str, Callable[[torch.Tensor], object]]:
    """Full pipelines (uint8 batch -> two views) and single components (float batch of 2B)."""
    ours = A.ViewAugment(cfg, size, MEAN, STD)
    k_crop = nn.Sequential(
        K.RandomResizedCrop((size, size), scale=(cfg.crop_scale_min, 1.0), ratio=A.RATIO),
        K.RandomHorizontalFlip(p=cfg.flip_p),
    )
    k_jitter = K.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, p=1.0)
    k_gray = K.RandomGrayscale(p=cfg.grayscale_p)
    jitter_all = AugmentConfig(**{**vars(cfg), "jitter_p": 1.0})

    def our_crop(x: torch.Tensor) -> object:
        n = x.shape[0]
        boxes = A.crop_boxes(n, size, size, (cfg.crop_scale_min, 1.0), x.device)
        return A.crop_flip(x, boxes, torch.rand(n) < cfg.flip_p, size)

    return {
        "full/kornia": kornia_two_views(cfg, size),
        "full/fassl": ours,
        "crop_flip/kornia": k_crop,
        "crop_flip/fassl": our_crop,
        "color_jitter_p1/kornia": k_jitter,
        "color_jitter_p1/fassl": lambda x: A.color_jitter(x, jitter_all),
        "grayscale/kornia": k_gray,
        "grayscale/fassl": lambda x: A.random_grayscale(x, cfg.grayscale_p),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = AugmentConfig()
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8)
    floats = torch.cat([images, images]).float() / 255.0  # components see both views' images
    fns = cases(cfg, args.size)
    inputs = {name: images if name.startswith("full/") else floats for name in fns}
    with torch.no_grad():
        seconds = timed(fns, inputs, args.repeats)
    rates = {name: args.batch / s for name, s in seconds.items()}
    for name, rate in rates.items():
        print(f"{name:26s} {rate:10.0f} images/s ({seconds[name] * 1e3:7.1f} ms/batch)")
    ratios = {}
    for name in rates:
        part, impl = name.split("/")
        if impl == "fassl":
            ratios[part] = rates[name] / rates[f"{part}/kornia"]
            print(f"{part:26s} fassl / kornia = {ratios[part]:.1f}x")
    result = {
        "what": "input images per second; each image yields two views (full) or the "
        "component is applied to both views' 2 x batch images",
        "batch": args.batch,
        "image_size": args.size,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "kornia": kornia.__version__,
        "machine": platform.processor() or platform.machine(),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),  # other work on the machine
        "images_per_s": {k: round(v, 1) for k, v in rates.items()},
        "speedup_fassl_over_kornia": {k: round(v, 2) for k, v in ratios.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
