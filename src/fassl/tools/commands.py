"""The ``fassl embed / rare / export / tsne`` sub-commands: argument parsing only.

Each command takes a checkpoint (any encoder file the project writes), reads its run's
configuration unless ``--config`` names one, applies ``key=value`` overrides, and
writes into ``--out`` (default: a folder next to the checkpoint). As in ``fassl.cli``,
each command imports its layers when it runs (start-up time).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fassl import flags
from fassl.config import Config


def _config(args: argparse.Namespace, checkpoint: Path) -> Config:
    from fassl.recipes import resolve_recipe
    from fassl.tools.common import tool_config

    recipe = resolve_recipe(args.config) if args.config else None
    cfg, where = tool_config(checkpoint, recipe, args.overrides)
    print(f"configuration: {where}")
    return cfg


def _listing(out: Path, names: list[str]) -> str:
    return f"wrote into {out}: " + ", ".join(names)


def cmd_embed(args: argparse.Namespace) -> None:
    from fassl.data.collection import load_collection
    from fassl.runtime import runtime_for
    from fassl.tools.common import default_out
    from fassl.tools.embed import EmbedOptions, run_embed

    ckpt = Path(args.checkpoint)
    cfg = _config(args, ckpt)
    opts = EmbedOptions(args.feature, args.dtype, args.batch_size, cfg.train.progress)
    opts.allow_overflow = args.allow_overflow
    coll = load_collection(args.data, cfg.data, cfg.seed)
    out = Path(args.out) if args.out else default_out(ckpt, "embed", coll.name)
    feats = run_embed(ckpt, coll, runtime_for(cfg.train), opts, out)
    print(f"{feats.shape[0]:,} images x {feats.shape[1]} dimensions ({args.feature})")
    print(_listing(out, ["embeddings.npy", "index.csv", "embeddings.json"]))


def cmd_rare(args: argparse.Namespace) -> None:
    from fassl.data.collection import load_collection
    from fassl.runtime import runtime_for
    from fassl.tools.common import default_out
    from fassl.tools.rare import RareOptions, run_rare

    ckpt = Path(args.checkpoint)
    cfg = _config(args, ckpt)
    weights = [w.strip() for w in args.weights.split(",") if w.strip()] if args.weights else []
    opts = RareOptions(weights, args.sheet, args.batch_size, cfg.train.progress, cfg.seed)
    if args.approximate_above is not None:
        opts.approximate_above = args.approximate_above
    coll = load_collection(args.data, cfg.data, cfg.seed)
    out = Path(args.out) if args.out else default_out(ckpt, "rare", coll.name)
    written = run_rare(ckpt, coll, cfg, runtime_for(cfg.train), opts, out)
    print(_listing(out, written))


def cmd_export(args: argparse.Namespace) -> None:
    from fassl.tools.export import export_backbone

    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else ckpt.parent / "export"
    paths = export_backbone(ckpt, out)
    print(_listing(out, [p.name for p in paths]))


def cmd_tsne(args: argparse.Namespace) -> None:
    from fassl.data import build_data
    from fassl.runtime import runtime_for
    from fassl.tools.tsne import TsneOptions, run_tsne

    # key=value overrides may follow the checkpoints: nargs="+" takes them too
    ckpts = [Path(a) for a in args.checkpoints if "=" not in a or Path(a).is_file()]
    args.overrides = [*(a for a in args.checkpoints if Path(a) not in ckpts), *args.overrides]
    cfg = _config(args, ckpts[0])
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else []
    opts = TsneOptions(classes, args.split, args.per_class, args.feature, cfg.seed)
    opts.progress, opts.batch_size = cfg.train.progress, args.batch_size
    out = Path(args.out) if args.out else ckpts[0].parent / "tsne.png"
    data = build_data(cfg.data, cfg.seed)
    print(f"wrote {run_tsne(ckpts, data, runtime_for(cfg.train), opts, out)}")


def _common(p: argparse.ArgumentParser, out_help: str, out_type=flags.out_folder) -> None:
    p.add_argument("--config", default=None, help="YAML recipe (default: the run's config)")
    p.add_argument("--out", type=out_type, default=None, help=out_help)
    p.add_argument(
        "--batch-size", type=flags.at_least(1), default=512, help="images per forward pass"
    )


DATA_HELP = (
    "an image folder, an archive of one, a built-in dataset (digits, cifar10...), or "
    "'pretrain': the long-tailed pre-training set of the config (e.g. the run's own)"
)


def _per_image_tool(
    sub: argparse._SubParsersAction, name: str, summary: str, outputs: str
) -> argparse.ArgumentParser:
    """A command over one encoder and one collection of images (embed, rare); its own
    options go between the positionals and the overrides."""
    p = sub.add_parser(name, help=summary)
    p.add_argument("checkpoint", help="any encoder file: export or training checkpoint")
    p.add_argument("data", help=DATA_HELP)
    _common(p, f"output folder for {outputs} (default: <checkpoint folder>/{name}-<data>)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    return p


def add_tool_commands(sub: argparse._SubParsersAction) -> None:
    """Register embed, rare, export and tsne on the ``fassl`` parser."""
    p = _per_image_tool(
        sub,
        "embed",
        "an embedding of every image: embeddings.npy, index.csv",
        "embeddings.npy, index.csv and embeddings.json",
    )
    p.add_argument("--feature", choices=("backbone", "projection"), default="backbone")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    p.add_argument(
        "--allow-overflow",
        action="store_true",
        help="float16: write features beyond 65504 as inf (counted) instead of refusing",
    )
    p.set_defaults(func=cmd_embed)
    p = _per_image_tool(
        sub,
        "rare",
        "rank every image by rarity: rarity.csv and figures",
        "rarity.csv, rarity.json, rarity_contact_sheet.png, rarity_density.png and (with "
        "labels) rarity_groups.md",
    )
    p.add_argument("--weights", default="", help="weights to rank by, e.g. knn,cluster_size")
    p.add_argument(
        "--sheet", type=flags.at_least(1), default=32, help="images on each side of the sheet"
    )
    p.add_argument(
        "--approximate-above",
        type=flags.at_least(0),
        default=None,
        help="images above which the neighbour search is approximate, with faiss-cpu "
        "(pip install 'fassl[ann]'); exact without it (default 50000)",
    )
    p.set_defaults(func=cmd_rare)
    p = sub.add_parser("export", help="the backbone for plain PyTorch: safetensors, TorchScript")
    p.add_argument("checkpoint", help="any encoder file: export or training checkpoint")
    p.add_argument(
        "--out",
        type=flags.out_folder,
        default=None,
        help="output folder for backbone.safetensors, backbone.pt and backbone.json "
        "(default: <checkpoint folder>/export)",
    )
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("tsne", help="t-SNE of chosen classes under one or two checkpoints")
    p.add_argument("checkpoints", nargs="+", help="one or two encoder files")
    p.add_argument("--classes", default="", help="class names, e.g. cat,dog,truck")
    p.add_argument("--split", choices=("test", "pretrain", "pool", "val"), default="test")
    p.add_argument(
        "--per-class", type=flags.at_least(1), default=200, help="images drawn per class"
    )
    p.add_argument("--feature", choices=("backbone", "projection"), default="backbone")
    _common(
        p, "the PNG to write (default: <first checkpoint folder>/tsne.png)", flags.out_file(".png")
    )
    p.set_defaults(func=cmd_tsne, overrides=[])
