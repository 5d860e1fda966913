"""``fassl bench``'s settings and flags, torch-free so that ``fassl --help`` stays fast.

The measurement itself is ``fassl.bench.run``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from fassl import flags
from fassl.config import COMPILE_MODES
from fassl.errors import ConfigError
from fassl.registry import METHOD_NAMES

CIFAR10_LT_IMAGES = 11_165  # the SDCLR protocol's CIFAR-10-LT pre-training set
RESULTS = Path("benchmarks/results")


@dataclass
class BenchSettings:
    """What ``fassl bench`` measures; the command-line flags one to one."""

    methods: list[str] = field(default_factory=lambda: ["simclr"])
    widths: list[int] = field(default_factory=lambda: [32])
    compiles: list[str] = field(default_factory=lambda: ["auto"])  # train.compile settings
    batch: int = 256
    device: str = "auto"
    precision: str = "auto"
    images: int = CIFAR10_LT_IMAGES
    image_size: int = 32
    epochs: int = 2
    steps: int = 5
    config: str = ""
    overrides: list[str] = field(default_factory=list)
    out: str = str(RESULTS)
    name: str = ""
    baseline: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``fassl bench`` flags, each with its range; ``key=value`` overrides may follow."""
    d = BenchSettings()
    methods = flags.choice_list(METHOD_NAMES)
    p.add_argument(
        "--method",
        type=methods,
        default=["simclr"],
        help="comma-separated, from: " + ",".join(METHOD_NAMES),
    )
    p.add_argument(
        "--width", type=flags.int_list(1), default=[32], help="comma-separated model widths"
    )
    p.add_argument(
        "--batch", type=flags.at_least(2), default=d.batch, help="images per step (>= 2)"
    )
    p.add_argument(
        "--compile",
        type=flags.choice_list(COMPILE_MODES),
        default=["auto"],
        help="comma-separated train.compile settings (auto | compile | eager), "
        "each its own row: e.g. eager,compile for the ratio in one run",
    )
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=d.precision)
    p.add_argument(
        "--images", type=flags.at_least(2), default=d.images, help="synthetic training images"
    )
    p.add_argument("--image-size", type=flags.at_least(8), default=d.image_size)
    p.add_argument(
        "--epochs", type=flags.at_least(1), default=d.epochs, help="full epochs (first = warm-up)"
    )
    p.add_argument(
        "--steps", type=flags.at_least(1), default=d.steps, help="timed steps of the step bench"
    )
    p.add_argument("--config", default="", help="recipe whose train.* monitors/checkpoints apply")
    p.add_argument(
        "--out",
        type=flags.out_folder,
        default=Path(d.out),
        help="folder for <name>.json and <name>.md",
    )
    p.add_argument(
        "--name", type=flags.file_stem, default=None, help="file stem (default bench_<device type>)"
    )
    p.add_argument("--baseline", action="store_true", help="add the per-image baseline")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.log_every=50")


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """The flags (already typed and range-checked by ``add_arguments``) as settings."""
    if args.images < args.batch:
        raise ConfigError(f"--images {args.images} is smaller than --batch {args.batch}")
    return BenchSettings(
        methods=args.method,
        widths=args.width,
        compiles=args.compile,
        batch=args.batch,
        device=args.device,
        precision=args.precision,
        images=args.images,
        image_size=args.image_size,
        epochs=args.epochs,
        steps=args.steps,
        config=args.config,
        overrides=list(args.overrides),
        out=str(args.out),
        name=args.name or "",
        baseline=args.baseline,
    )
