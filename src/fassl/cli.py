"""The ``fassl`` command.

Start-up time: each ``cmd_*`` function (here and in ``fassl.tools.commands``) imports its
command's layers, and with them torch, inside the function, when the command runs; so
``fassl --help`` and a mistyped key answer at once.
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from dataclasses import fields
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

from fassl import flags
from fassl.bench.settings import add_arguments as bench_arguments
from fassl.compare import arm_listing
from fassl.config import Config, OptimConfig, PipelineConfig, load_config
from fassl.errors import (
    Interrupted,
    PeerFailed,
    debug_enabled,
    describe,
    expected_errors,
)
from fassl.names import CONFIG, EXPORT, PIPELINE_STAGES, REPORT, RESULTS
from fassl.recipes import OVERLAYS, RECIPES, recipe_names, resolve_recipe, run_config_for
from fassl.tools.commands import add_tool_commands
from fassl.validation import check_paths

if TYPE_CHECKING:  # the type only: torch loads when a command runs
    from fassl.runtime import Runtime

# One example line per sub-command, shown in its --help and in ``fassl --help``.
EXAMPLES = {
    "pretrain": "fassl pretrain cifar10_lt_cpu method=byol data.root=~/data/cifar10-jpeg.tar.gz",
    "pipeline": "fassl pipeline cifar10_lt_cpu data.root=~/data/cifar10-jpeg.tar.gz",
    "compare": 'fassl compare cifar10_lt_cpu "compare.methods=[simclr,sdclr,fassl]"',
    "tables": "fassl tables runs/cifar10_lt_cpu --paper",
    "eval": "fassl eval runs/cifar10_lt_cpu/rebalance/encoder.safetensors",
    "demo": "fassl demo --out runs/demo",
    "embed": "fassl embed runs/demo/rebalance/encoder.safetensors ~/photos --out emb",
    "rare": "fassl rare runs/demo/rebalance/encoder.safetensors ~/photos --out rare",
    "export": "fassl export runs/demo/rebalance/encoder.safetensors --out exported",
    "tsne": "fassl tsne runs/d/teacher/encoder.safetensors runs/d/rebalance/encoder.safetensors",
    "bench": "fassl bench --method simclr,sdclr --width 32 --device cpu",
    "prepare": "fassl prepare ~/photos --config cifar10_lt_cpu data.image_size=64",
    "info": "fassl info",
}


def _pipeline_keys() -> str:
    """The ``pipeline.*`` keys, for ``fassl pipeline --help``."""
    plain = [f"pipeline.{f.name}" for f in fields(PipelineConfig) if f.name not in PIPELINE_STAGES]
    optim = ", ".join(f.name for f in fields(OptimConfig))
    return (
        f"pipeline keys: {', '.join(plain)} (skip stages);\n"
        f"  pipeline.{{{','.join(PIPELINE_STAGES)}}}.{{{optim}}}\n"
        "  (each stage's optimizer; out_dir/<stage>/ holds the stage)"
    )


def _epilog(command: str) -> str:
    text = f"example:\n  {EXAMPLES[command]}"
    if command in ("pretrain", "pipeline", "compare", "eval", "demo"):
        text += f"\n\nrecipes (configs/): {', '.join(recipe_names())}"
    if command == "pipeline":
        text += "\n\n" + _pipeline_keys()
    if command == "compare":
        text += "\n\n" + arm_listing()
    return text


def _add_examples(parser: argparse.ArgumentParser, sub: argparse._SubParsersAction) -> None:
    """Example lines (and recipes) under every sub-command's help and ``fassl --help``."""
    for name, p in sub.choices.items():
        if name in EXAMPLES:
            p.epilog = _epilog(name)
            p.formatter_class = argparse.RawDescriptionHelpFormatter
    lines = [f"  {EXAMPLES[name]}" for name in sub.choices if name in EXAMPLES]
    parser.epilog = (
        "examples:\n"
        + "\n".join(lines)
        + f"\n\nrecipes (configs/): {', '.join(recipe_names())}"
        + "\nFASSL_DEBUG=1 shows the traceback of any error."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _config(args: argparse.Namespace) -> Config:
    path = resolve_recipe(args.config) if args.config else None
    return check_paths(load_config(path, args.overrides))


def _join(cfg: Config) -> tuple[Runtime, bool]:
    """The device, and torchrun's process group when there is one, set up first: before
    any lock or file, so every later step knows which rank it runs on. The run's
    ``Runtime``, which every layer below takes from here, and True on rank 0 (the rank
    that prints what a run wrote)."""
    from fassl.distributed import is_main
    from fassl.runtime import runtime_for

    rt = runtime_for(cfg.train)
    return rt, is_main()


def cmd_pretrain(args: argparse.Namespace) -> None:
    from fassl.runs.pretrain import run_pretrain

    cfg = _config(args)
    rt, main_rank = _join(cfg)
    run_pretrain(cfg, rt, restart=args.restart)
    if main_rank:
        print(f"outputs in {cfg.out_dir}: {RESULTS}, {REPORT}, {EXPORT}")


def cmd_pipeline(args: argparse.Namespace) -> None:
    from fassl.runs.pipeline import run_pipeline

    cfg = _config(args)
    rt, main_rank = _join(cfg)
    run_pipeline(cfg, rt, restart=args.restart or "")
    if main_rank:
        print(f"outputs in {cfg.out_dir}: {_outputs(Path(cfg.out_dir))}")


def _outputs(out: Path) -> str:
    """The files a run wrote for people to read, as found in ``out`` (nothing assumed)."""
    kinds = (".json", ".md", ".png")
    names = sorted(p.name for p in out.iterdir() if p.is_file() and p.suffix in kinds)
    names += sorted(f"{p.parent.name}/" for p in out.glob("rarity_*/rarity.csv"))
    return ", ".join(names)


def _eval_config(args: argparse.Namespace, ckpt: Path) -> Config:
    """--config when given, else the run's own config; never a guessed dataset."""
    if args.config:
        return _config(args)
    found = run_config_for(ckpt)
    print(f"using the run's config {found}")
    return check_paths(load_config(found, args.overrides))


def cmd_eval(args: argparse.Namespace) -> None:
    from fassl.data import build_data
    from fassl.encoders import load_encoder
    from fassl.runs.probes import check_trained_data, evaluate_export
    from fassl.runtime import runtime_for
    from fassl.tools.common import eval_out

    ckpt = Path(args.checkpoint)
    cfg = _eval_config(args, ckpt)
    load_encoder(ckpt)  # a file that does not load fails before the data is read
    out = eval_out(args.out, args.overrides, cfg, ckpt)
    rt = runtime_for(cfg.train)
    data = build_data(cfg.data, cfg.seed)
    if not args.config and not any(o.startswith("data.") for o in args.overrides):
        # the run's own data, as far as its config says: check it is what was trained on
        check_trained_data(ckpt, data, f"the run's {CONFIG}")
    evaluate_export(ckpt, data, cfg, rt, out, f"evaluation of {ckpt}")
    print((out / REPORT).read_text())
    print(f"results in {out / RESULTS}")


def demo_config(overrides: list[str]) -> Config:
    """demo.yaml, with its fp32 size laid over it where training would run in fp32."""
    from fassl.runtime import resolve_autocast, resolve_device

    cfg = load_config(RECIPES / "demo.yaml", overrides)
    device = resolve_device(cfg.train.device)
    if resolve_autocast(device, cfg.train.precision) is None:
        overlay = OVERLAYS / "demo_fp32.yaml"
        print(f"training runs in fp32 here: the demo takes its shorter schedule ({overlay.name})")
        cfg = load_config([RECIPES / "demo.yaml", overlay], overrides)
    return cfg


def cmd_demo(args: argparse.Namespace) -> None:
    from fassl.runs.pipeline import run_pipeline

    cfg = demo_config([f"out_dir={args.out}", *args.overrides])
    rt, main_rank = _join(cfg)
    run_pipeline(cfg, rt, with_pixels=True, restart=args.restart or "")
    if main_rank:
        print((Path(cfg.out_dir) / REPORT).read_text())
        print(f"report in {Path(cfg.out_dir) / REPORT}")


def cmd_compare(args: argparse.Namespace) -> None:
    from fassl.compare.run import run_comparison

    cfg = _config(args)
    rt, _ = _join(cfg)
    run_comparison(cfg, rt)


def cmd_tables(args: argparse.Namespace) -> None:
    from fassl.compare.run import (
        collect_runs,
        paper_dataset_of,
        tables_notes,
        unfinished_runs,
        write_comparison,
    )
    from fassl.compare.sweep import GRID_FILE, write_sweep

    out = Path(args.out_dir)
    if (out / GRID_FILE).is_file():  # a sweep (compare.grid): Table 3-5 layout
        write_sweep(out)
        return
    runs, unfinished = collect_runs(out), unfinished_runs(out)
    # on stderr too: stdout is the whole comparison.md, where the note is easy to miss
    for run in unfinished:
        print(f"fassl tables: unfinished, left out: {run.describe()}", file=sys.stderr)
    if not runs:
        left = "; unfinished: " + "; ".join(u.describe() for u in unfinished) if unfinished else ""
        raise FileNotFoundError(f"no finished runs (<method>/seed<k>/{RESULTS}) in {out}{left}")
    paper = paper_dataset_of(out) if args.paper == "auto" else args.paper
    write_comparison(out, runs, out.name, tables_notes(out, runs, unfinished), paper=paper)


def cmd_bench(args: argparse.Namespace) -> None:
    from fassl.bench.run import run_bench
    from fassl.bench.settings import settings_from_args

    run_bench(settings_from_args(args), "fassl bench " + " ".join(sys.argv[2:]))


def cmd_prepare(args: argparse.Namespace) -> None:
    from fassl.data.sources.folder import prepare

    path = resolve_recipe(args.config) if args.config else None
    overrides = [*args.overrides, "data.dataset=folder", f"data.root={args.data}"]
    cfg = check_paths(load_config(path, overrides))
    for line in prepare(cfg.data):
        print(line)


def cmd_info(args: argparse.Namespace) -> None:
    from fassl.runtime import machine_lines

    print("\n".join(machine_lines()))


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the flag, what is wrong, where the help is (the
    usage block would bury the one line that matters)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _with_config(p: argparse.ArgumentParser, optional: bool = False) -> None:
    if optional:
        p.add_argument("--config", default=None, help="YAML recipe (path or packaged name)")
    else:
        p.add_argument("config", help="YAML recipe (path or packaged name)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.3")


def _with_restart(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--restart",
        choices=PIPELINE_STAGES,
        help="train this stage again, and the stages after it, in an existing out_dir",
    )


def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    """pretrain, pipeline, compare, tables, eval and demo."""
    p = sub.add_parser("pretrain", help="train one method, then run the probes")
    _with_config(p)
    p.add_argument("--restart", action="store_true", help="train again in an existing out_dir")
    p.set_defaults(func=cmd_pretrain)
    p = sub.add_parser("pipeline", help="FASSL: SDCLR teacher, prototypes, student, probes")
    _with_config(p)
    _with_restart(p)
    p.set_defaults(func=cmd_pipeline)
    p = sub.add_parser("compare", help="train several methods over seeds; write tables")
    _with_config(p)
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser(
        "tables", help="comparison (or sweep) tables from the finished runs of a compare"
    )
    p.add_argument("out_dir", help="a compare out_dir")
    p.add_argument(
        "--paper",
        nargs="?",
        const="auto",
        choices=("auto", "cifar10", "cifar100"),
        help="add the paper's rows (CIFAR-10-LT or CIFAR-100-LT; default: the comparison's)",
    )
    p.set_defaults(func=cmd_tables)
    p = sub.add_parser("eval", help="linear / few-shot probes and kNN of a checkpoint")
    p.add_argument("checkpoint", help="encoder.safetensors or checkpoints/last.safetensors")
    p.add_argument(
        "--out",
        type=flags.out_folder,
        default=None,
        help="folder for results.json and report.md (default: eval-<data> beside the checkpoint)",
    )
    _with_config(p, optional=True)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("demo", help="the whole pipeline on the embedded digits (minutes)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("overrides", nargs="*")
    _with_restart(p)
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fassl",
        description="Frequency-aware self-supervised learning on long-tailed images.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_training_commands(sub)
    add_tool_commands(sub)
    p = sub.add_parser("bench", help="training throughput, MFU and memory of the loop")
    bench_arguments(p)
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("prepare", help="decode a folder once into the image store runs read")
    p.add_argument("data", help="an image folder, or an archive of one")
    _with_config(p, optional=True)
    p.set_defaults(func=cmd_prepare)
    p = sub.add_parser("info", help="this machine, and what precision and layout auto pick")
    p.set_defaults(func=cmd_info)
    _add_examples(parser, sub)
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
    previous = _on_sigterm(_terminate)
    try:
        args.func(args)
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: one line, the usual exit status
        group = _group()
        if group is not None:
            group.announce_stop(group.INTERRUPTED)
            peer = None if group.is_main() else group.stopped_peer()
            if peer is not None and peer[1] == group.FAILED:  # torchrun stopping the group
                print(f"fassl: error: {group.peer_stopped(peer)}", file=sys.stderr)
                return 2
        if debug_enabled():
            traceback.print_exc()
        if group is None or group.is_main():  # every rank was stopped: rank 0 says where
            where = str(err) or "interrupted; what was written before is intact, run it again"
            print(f"fassl: {where}", file=sys.stderr)
        return 128 + int(getattr(err, "signum", signal.SIGINT))
    except Exception as err:  # the one error boundary: expected errors become a message
        group = _group()
        prefix = ""
        if group is not None and not isinstance(err, PeerFailed):
            group.announce_stop(group.FAILED)
            # a collective failed because another rank stopped, or its process is gone
            lost = None if isinstance(err, expected_errors()) else group.peer_failure(err)
            if lost is not None:
                err = lost
            elif not group.is_main():
                prefix = f"rank {group.rank()}: "
        if not isinstance(err, expected_errors()):
            raise  # a bug: keep the traceback
        if debug_enabled():
            traceback.print_exc()
        # one write: the ranks of a torchrun run share stderr, and print's two would mix
        sys.stderr.write(f"fassl: error: {prefix}{describe(err)}\n")
        return 2
    finally:
        _on_sigterm(previous)
    group = _group()
    if group is not None:
        group.shutdown()
    return 0


def _group() -> ModuleType | None:
    """``fassl.distributed`` when this command joined a process group of several ranks;
    None otherwise. Looked up, not imported: a command that never loaded it (nor torch)
    has no group, and its errors stay fast."""
    group = sys.modules.get("fassl.distributed")
    return group if group is not None and group.world_size() > 1 else None


def _on_sigterm(handler: Any) -> Any:
    """Install ``handler`` for SIGTERM and return the previous one (None off the main
    thread, where Python cannot set handlers)."""
    try:
        return signal.signal(signal.SIGTERM, handler)
    except (ValueError, TypeError):
        return None


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM ends a command as Ctrl-C does: where it stopped is reported, the last
    checkpoint stays as it was, the exit status is 143."""
    raise Interrupted("", signum)


if __name__ == "__main__":
    sys.exit(main())
