"""The ``fassl`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fassl.config import Config, ConfigError, load_config

RECIPES = Path(__file__).parent / "configs"


def resolve_recipe(name: str) -> Path:
    """A config path, or the name of a packaged recipe (``cifar10_lt_cpu``)."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = RECIPES / (name if name.endswith(".yaml") else f"{name}.yaml")
    if packaged.is_file():
        return packaged
    known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
    raise ConfigError(f"config file not found: {name} (packaged recipes: {known})")


def _config(args: argparse.Namespace) -> Config:
    path = resolve_recipe(args.config) if args.config else None
    return load_config(path, args.overrides)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from fassl.pipeline import run_pretrain

    cfg = _config(args)
    run_pretrain(cfg)
    print(f"outputs in {cfg.out_dir}: results.json, report.md, encoder.safetensors")


def cmd_pipeline(args: argparse.Namespace) -> None:
    from fassl.pipeline import run_pipeline

    cfg = _config(args)
    run_pipeline(cfg)
    print(f"outputs in {cfg.out_dir}: results.json, report.md, analysis_*.md")


def cmd_eval(args: argparse.Namespace) -> None:
    from fassl.data.build import build_data
    from fassl.pipeline import evaluate_export
    from fassl.runtime import runtime_for

    cfg = _config(args)
    ckpt = Path(args.checkpoint)
    out = (
        Path(cfg.out_dir)
        if any(o.startswith("out_dir=") for o in args.overrides)
        else (ckpt.parent / "eval")
    )
    rt = runtime_for(cfg.train)
    data = build_data(cfg.data, cfg.seed)
    evaluate_export(ckpt, data, cfg, rt, out, f"evaluation of {ckpt}")
    print((out / "report.md").read_text())
    print(f"results in {out / 'results.json'}")


def cmd_demo(args: argparse.Namespace) -> None:
    from fassl.pipeline import run_pipeline

    cfg = load_config(RECIPES / "demo.yaml", [f"out_dir={args.out}", *args.overrides])
    run_pipeline(cfg, with_pixels=True)
    print((Path(cfg.out_dir) / "report.md").read_text())
    print(f"report in {Path(cfg.out_dir) / 'report.md'}")


def cmd_compare(args: argparse.Namespace) -> None:
    from fassl.compare import run_comparison

    cfg = _config(args)
    run_comparison(cfg)


def cmd_tables(args: argparse.Namespace) -> None:
    from fassl.compare import collect_runs, write_comparison

    out = Path(args.out_dir)
    runs = collect_runs(out)
    if not runs:
        raise FileNotFoundError(f"no finished runs (<method>/seed<k>/results.json) in {out}")
    write_comparison(
        out, runs, out.name, [f"{len(runs)} finished runs found in {out}"], cifar10=args.paper
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fassl",
        description="Frequency-aware self-supervised learning on long-tailed images.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser, optional: bool = False) -> None:
        if optional:
            p.add_argument("--config", default=None, help="YAML recipe (path or packaged name)")
        else:
            p.add_argument("config", help="YAML recipe (path or packaged name)")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.3")

    p = sub.add_parser("pretrain", help="train one method, then run the probes")
    with_config(p)
    p.set_defaults(func=cmd_pretrain)
    p = sub.add_parser("pipeline", help="FASSL: SDCLR teacher, prototypes, student, probes")
    with_config(p)
    p.set_defaults(func=cmd_pipeline)
    p = sub.add_parser("compare", help="train several methods over seeds; write tables")
    with_config(p)
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("tables", help="comparison tables from the finished runs of a compare")
    p.add_argument("out_dir", help="a compare out_dir")
    p.add_argument("--paper", action="store_true", help="add the paper's CIFAR-10-LT rows")
    p.set_defaults(func=cmd_tables)
    p = sub.add_parser("eval", help="linear / few-shot probes and kNN of a checkpoint")
    p.add_argument("checkpoint", help="encoder.safetensors or checkpoints/last.safetensors")
    with_config(p, optional=True)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("demo", help="the whole pipeline on the embedded digits (minutes)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may follow options (fassl eval CKPT --config demo out_dir=x)
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if "=" not in a or a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*getattr(args, "overrides", []), *extra]
    from fassl.models.state import IncompatibleCheckpoint
    from fassl.train.checkpoint import CheckpointError
    from fassl.train.loop import NonFiniteLoss

    try:
        args.func(args)
    except (
        ConfigError,
        CheckpointError,
        IncompatibleCheckpoint,
        NonFiniteLoss,
        FileNotFoundError,
        NotADirectoryError,
    ) as err:
        print(f"fassl: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
