"""``fassl bench``: how busy the training loop keeps the device, per method.

For each method and width, in one run and on one synthetic dataset of CIFAR-10-LT's
size (11,165 uint8 images of 32x32 by default, long-tailed labels for the monitors):

- step-only throughput: ``Trainer.train_step`` on a fixed batch (augmentation, forward,
  backward, optimizer step and the method's hooks), nothing else;
- full-epoch throughput: ``Trainer.fit`` through the real loop, with the recipe's
  monitors and checkpoints; the first epoch (kernel selection, compilation) is left out
  when more than one epoch runs. ``epoch_img_s`` is the loop with its epoch boundaries
  (permutation, re-pruning, stage-2 bank) but without monitors and checkpoints, which
  are timed apart and amortised as the recipe schedules them in ``recipe_epoch_img_s``;
- FLOP per image (``torch.utils.flop_counter.FlopCounterMode`` over forward + backward
  of the training step, grouped convolutions counted right: ``fassl.bench.flops``) and
  a dense matmul's rate in the same dtype measured beside it, hence model-FLOP
  utilisation (MFU);
- peak host RSS (``resource.getrusage``) and peak GPU memory;
- optionally a per-image baseline (torchvision transforms in DataLoader workers, or
  kornia's where torchvision cannot be imported) feeding the same model, for a
  side-by-side ratio.

JSON and a markdown table (device name, torch version) go under ``benchmarks/results``.
"""

from __future__ import annotations

import itertools
import json
import resource
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from fassl.analysis.monitors import stage2_monitor
from fassl.bench.data import per_image_baseline, synthetic_data
from fassl.bench.flops import flop_counter
from fassl.bench.report import device_name, markdown
from fassl.bench.settings import BenchSettings
from fassl.config import Config, load_config
from fassl.data import LongTailData
from fassl.eval.knn import knn_monitor
from fassl.files import write_text
from fassl.methods import build_method
from fassl.methods.base import EpochContext
from fassl.recipes import resolve_recipe
from fassl.runtime import Runtime, runtime_for
from fassl.train.loop import Trainer


def bench_config(
    s: BenchSettings, method: str, width: int, run_dir: Path, compile_: str = "auto"
) -> Config:
    """The recipe (if any), then the bench's own settings, then the user's overrides."""
    path = resolve_recipe(s.config) if s.config else None
    return load_config(
        path,
        [
            f"method={method}",
            f"model.width={width}",
            f"optim.batch_size={s.batch}",
            f"optim.epochs={s.epochs}",
            f"train.device={s.device}",
            f"train.precision={s.precision}",
            f"train.compile={compile_}",
            "train.progress=false",
            f"out_dir={run_dir}",
            *s.overrides,
        ],
    )


def make_method(cfg: Config, name: str) -> torch.nn.Module:
    """The method; stage 2 starts from a fresh stage-1 export (it needs prototypes)."""
    torch.manual_seed(cfg.seed)
    init = None
    if name == "fassl_rebalance":
        init = build_method(cfg, "fassl_prototypes").export_state()  # type: ignore[operator]
    return build_method(cfg, name, init)


def monitors_for(cfg: Config, data: LongTailData, name: str) -> list:
    """What ``fassl pipeline`` attaches to the stage: the kNN monitor, and for stage 2 the
    weight-enrichment monitor."""
    monitors = [knn_monitor(data, cfg.probe.knn_k)] if cfg.train.knn_every else []
    if name == "fassl_rebalance":
        monitors.append(stage2_monitor(data))
    return monitors


def step_rate(trainer: Trainer, steps: int) -> tuple[float, float]:
    """Images/s of ``Trainer.train_step`` on one fixed batch after two warm-up steps, and
    the warm-up's seconds (compilation, when ``train.compile`` is on, happens there)."""
    batch = trainer.optim_cfg.batch_size
    idx = torch.randperm(len(trainer.images))[:batch]
    t_warm = time.perf_counter()
    for step in range(2):
        trainer.train_step(idx, step)
    trainer.rt.synchronize()
    t0 = time.perf_counter()
    for step in range(2, 2 + steps):
        loss, _ = trainer.train_step(idx, step)
    float(loss)  # wait for the device
    return steps * batch / (time.perf_counter() - t0), t0 - t_warm


def flop_per_image(trainer: Trainer) -> float:
    """FLOP of forward + backward of one training step, per image (all its views)."""
    batch = trainer.optim_cfg.batch_size
    index = torch.arange(batch)
    views = trainer.views(index)
    extra = trainer.forward_extras(index)
    with flop_counter() as counter:
        with trainer.autocast():
            loss, _ = trainer.method(views, *extra)
        loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def matmul_peak(rt: Runtime, seconds: float = 1.0) -> float:
    """FLOP/s of a large square matmul in the training dtype (bf16 under bf16 autocast,
    else fp32 with the runtime's TF32 setting) on the training device: the fastest of
    repeated timings, so that other work on a shared machine does not lower the peak."""
    n = 8192 if rt.device.type == "cuda" else 2048
    dtype = rt.autocast_dtype or torch.float32
    a = torch.randn(n, n, device=rt.device, dtype=dtype)
    b = torch.randn(n, n, device=rt.device, dtype=dtype)
    a @ b
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end or best == float("inf"):
        rt.synchronize()
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        rt.synchronize()
        best = min(best, (time.perf_counter() - t0) / 4)
    return 2 * n**3 / best


class TimedTrainer(Trainer):
    """The real Trainer, with the seconds spent in checkpoints and monitors recorded."""

    boundary: list[tuple[str, int, float]]

    def timed(self, kind: str, epoch: int, seconds: float) -> None:
        if not hasattr(self, "boundary"):
            self.boundary = []
        self.boundary.append((kind, epoch, seconds))

    def save(self, epoch: int) -> None:
        t0 = time.perf_counter()
        super().save(epoch)
        self.timed("checkpoint", epoch, time.perf_counter() - t0)

    def wrap_monitors(self) -> None:
        def timing(monitor: Any) -> Any:
            def timed_monitor(trainer: Trainer) -> dict[str, float]:
                t0 = time.perf_counter()
                out = monitor(trainer)
                self.timed("monitor", trainer.epoch, time.perf_counter() - t0)
                return out

            return timed_monitor

        self.monitors = [timing(m) for m in self.monitors]


def epoch_rates(trainer: TimedTrainer, t_start: float) -> dict[str, float]:
    """Full-epoch images/s as run, without monitors and checkpoints, and amortised."""
    ends = trainer.epoch_ends
    first = 1 if len(ends) > 1 else 0  # leave out the warm-up epoch when there is another
    t0 = ends[0] if first else t_start
    epochs = len(ends) - first
    images = epochs * trainer.steps_per_epoch * trainer.optim_cfg.batch_size
    wall = ends[-1] - t0
    boundary = getattr(trainer, "boundary", [])
    spent = sum(s for _, e, s in boundary if e >= first)
    loop_s = (wall - spent) / epochs
    train = trainer.cfg.train
    monitor_s = max((s for kind, _, s in boundary if kind == "monitor"), default=0.0)
    ckpt_s = max((s for kind, _, s in boundary if kind == "checkpoint"), default=0.0)
    every_s = train.checkpoint_every_s
    amortised = loop_s + (monitor_s / train.knn_every if train.knn_every else 0.0)
    amortised += ckpt_s * (1.0 if every_s <= 0 else min(1.0, loop_s / every_s))
    per_epoch = trainer.steps_per_epoch * trainer.optim_cfg.batch_size
    return {
        "full_epoch_img_s": images / wall,
        "epoch_img_s": per_epoch / loop_s,
        "recipe_epoch_img_s": per_epoch / amortised,
        "monitor_s": monitor_s,
        "checkpoint_s": ckpt_s,
        "epochs_timed": epochs,
    }


def peak_memory(device: torch.device) -> dict[str, float | None]:
    """Peak resident memory of this process so far (GiB) and peak GPU memory (GiB)."""
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    gpu = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"peak_host_rss_gib": rss_kib / 2**20, "peak_gpu_gib": gpu}


def measure(
    s: BenchSettings, data: LongTailData, method: str, width: int, compile_: str
) -> dict[str, Any]:
    """One row: every measurement of one method at one width and compile setting."""
    with tempfile.TemporaryDirectory(prefix="fassl-bench-") as tmp:
        cfg = bench_config(s, method, width, Path(tmp) / "steps", compile_)
        rt = runtime_for(cfg.train)
        if rt.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(rt.device)

        def trainer(run_dir: Path, monitors: list | None = None) -> TimedTrainer:
            return TimedTrainer(
                make_method(cfg, method), data, cfg, cfg.optim, run_dir, rt, method, monitors
            )

        steps_trainer = trainer(Path(tmp) / "steps")
        # What an epoch start prepares (SDCLR's masks, stage 2's bank) before any step.
        steps_trainer.method.on_epoch_start(EpochContext(0, s.epochs, steps_trainer.embed))
        row: dict[str, Any] = {"method": method, "width": width, "batch": s.batch}
        row["compile"] = compile_
        row["flop_per_image"] = flop_per_image(steps_trainer)
        peak = matmul_peak(rt)  # beside the step timing: both see the same machine load
        row["step_img_s"], row["warmup_s"] = step_rate(steps_trainer, s.steps)
        row["compiled"] = steps_trainer.forward.active
        baseline = per_image_baseline(steps_trainer, s.steps) if s.baseline else None
        row["per_image_library"], row["per_image_baseline_img_s"] = baseline or (None, None)
        del steps_trainer
        fit_trainer = trainer(Path(tmp) / "fit", monitors_for(cfg, data, method))
        fit_trainer.wrap_monitors()
        t_start = time.perf_counter()
        fit_trainer.fit()
        row |= epoch_rates(fit_trainer, t_start)
        row["peak_matmul_flop_s"] = max(peak, matmul_peak(rt))
    row["matmul_dtype"] = str(rt.autocast_dtype or torch.float32).removeprefix("torch.")
    for key in ("step", "epoch", "recipe_epoch"):
        row[f"{key}_mfu"] = row["flop_per_image"] * row[f"{key}_img_s"] / row["peak_matmul_flop_s"]
    row["recipe_epoch_over_step"] = row["recipe_epoch_img_s"] / row["step_img_s"]
    base = row.get("per_image_baseline_img_s")
    row["step_over_per_image"] = row["step_img_s"] / base if base else None
    return row | peak_memory(rt.device)


def run_bench(s: BenchSettings, command: str = "fassl bench") -> dict[str, Any]:
    """Measure every (method, width); write ``<name>.json`` and ``<name>.md``."""
    data = synthetic_data(s.images, s.image_size)
    rows = []
    for width in s.widths:
        for method, compile_ in itertools.product(s.methods, s.compiles):
            row = measure(s, data, method, width, compile_)
            print(
                f"{method} width {width} ({'compiled' if row['compiled'] else 'eager'}): "
                f"step {row['step_img_s']:.1f} img/s, recipe epoch "
                f"{row['recipe_epoch_img_s']:.1f} img/s, step MFU {row['step_mfu']:.1%}"
            )
            rows.append(row)
    rt = runtime_for(bench_config(s, s.methods[0], s.widths[0], Path(s.out)).train)
    result = {
        "command": command,
        "device_name": device_name(rt.device),
        "device": str(rt.device),
        "torch": torch.__version__,
        "precision": str(rt.autocast_dtype or torch.float32).removeprefix("torch."),
        "settings": asdict(s),
        "rows": rows,
    }
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = s.name or f"bench_{rt.device.type}"
    write_text(out / f"{stem}.json", json.dumps(result, indent=2))
    write_text(out / f"{stem}.md", markdown(result))
    print(f"results in {out / stem}.json and .md")
    return result
