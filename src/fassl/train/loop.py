"""The one training loop every method runs under.

It owns the device and process group, autocast, the optimizer and its per-step schedule,
checkpoints and resume, logging and the progress bar. A method only turns two augmented
views into a loss (``fassl.methods.base.Method``).

Determinism: the data order and the augmentation of epoch ``e`` depend only on
(seed, e, rank), so a run resumed from the checkpoint of epoch ``e - 1`` continues
exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from fassl import distributed as dist
from fassl.config import Config, OptimConfig, to_dict
from fassl.data.augment import TwoViewAugment
from fassl.data.bundle import LongTailData
from fassl.features import eval_mode, extract_features
from fassl.methods.base import EpochContext, Method
from fassl.models.state import load_state_checked
from fassl.runtime import Runtime
from fassl.train.checkpoint import (
    load_checkpoint,
    load_optimizer_state,
    optimizer_state,
    prefixed,
    save_checkpoint,
    split_prefixed,
)
from fassl.train.logger import MetricLogger
from fassl.train.optim import build_optimizer, lr_at, set_lr

LAST = "checkpoints/last.safetensors"
EXPORT = "encoder.safetensors"


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch * 7919


def batch_indices(n: int, batch_size: int, seed: int, epoch: int) -> torch.Tensor:
    """This process's share of each global batch of epoch ``epoch``: (steps, batch/world).

    The permutation is the same on every rank; rank r takes the r-th slice of each global
    batch, so the global batch is the same for any number of processes.
    """
    world, rank = dist.world_size(), dist.rank()
    if batch_size % world:
        raise ValueError(f"optim.batch_size {batch_size} is not divisible by {world} processes")
    steps = n // batch_size
    if steps == 0:
        raise ValueError(
            f"optim.batch_size {batch_size} is larger than the {n} training images; lower it"
        )
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    perm = torch.randperm(n, generator=g)[: steps * batch_size].view(steps, world, -1)
    return perm[:, rank]


class Trainer:
    """Trains one method on one dataset into ``run_dir``; resumes what is there."""

    def __init__(
        self,
        method: Method,
        data: LongTailData,
        cfg: Config,
        optim_cfg: OptimConfig,
        run_dir: Path,
        runtime: Runtime,
        stage: str,
        monitors: list[Callable[[Trainer], dict[str, float]]] | None = None,
    ) -> None:
        self.method, self.data, self.cfg, self.optim_cfg = method, data, cfg, optim_cfg
        self.run_dir, self.rt, self.stage = Path(run_dir), runtime, stage
        self.device = runtime.device
        self.memory_format = runtime.memory_format
        method.to(self.device, memory_format=self.memory_format)
        self.model: nn.Module = method
        if dist.world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Buffers (queues, masks, BN statistics) stay per process: no broadcast.
            self.model = nn.parallel.DistributedDataParallel(
                method, device_ids=ids, broadcast_buffers=False
            )
        self.optimizer = build_optimizer(method, optim_cfg)
        self.images = data.pretrain.images.to(self.device)  # uint8: small enough to keep
        self.augment = TwoViewAugment(cfg.augment, data.image_size, data.mean, data.std).to(
            self.device
        )
        self.steps_per_epoch = len(data.pretrain) // optim_cfg.batch_size
        self.total_steps = self.steps_per_epoch * optim_cfg.epochs
        self.warmup_steps = round(optim_cfg.warmup_epochs * self.steps_per_epoch)
        self.start_epoch = 0
        # Label-using measurements (analysis only: kNN accuracy, weight enrichment) after
        # every ``train.knn_every`` epochs and the last one; they see ``self.epoch``.
        self.monitors = monitors or []
        self.epoch = 0
        self.logger = MetricLogger(self.run_dir, enabled=dist.is_main())

    # ---- checkpoints -------------------------------------------------------------------
    def checkpoint_meta(self, epoch: int) -> dict:
        return {
            "stage": self.stage,
            "method": self.method.name,
            "model": to_dict(self.cfg.model),
            "epoch": epoch,
            "epochs": self.optim_cfg.epochs,
            "steps_per_epoch": self.steps_per_epoch,
        }

    def save(self, epoch: int) -> None:
        if not dist.is_main():
            return
        opt_tensors, groups = optimizer_state(self.optimizer)
        meta = self.checkpoint_meta(epoch) | {"optimizer_groups": groups}
        tensors = prefixed(self.method.state_dict(), "model") | prefixed(opt_tensors, "optim")
        save_checkpoint(self.run_dir / LAST, tensors, meta)

    def try_resume(self) -> None:
        path = self.run_dir / LAST
        if not path.is_file():
            return
        tensors, meta = load_checkpoint(path)
        if meta.get("method") != self.method.name or meta.get("stage") != self.stage:
            raise ValueError(
                f"{path} belongs to stage {meta.get('stage')!r} (method {meta.get('method')!r}), "
                f"not to {self.stage!r}: use another out_dir"
            )
        load_state_checked(self.method, split_prefixed(tensors, "model"), str(path))
        load_optimizer_state(
            self.optimizer, split_prefixed(tensors, "optim"), meta["optimizer_groups"]
        )
        self.start_epoch = int(meta["epoch"]) + 1
        if dist.is_main():
            print(f"[{self.stage}] resuming from {path} after epoch {meta['epoch'] + 1}")

    # ---- helpers for methods and monitors ----------------------------------------------
    def views(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.images[index.to(self.device)]
        with torch.no_grad():
            v1, v2 = self.augment(batch)
        return (
            v1.contiguous(memory_format=self.memory_format),
            v2.contiguous(memory_format=self.memory_format),
        )

    def embed(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Features of all training images (no augmentation) through ``fn``, in eval mode,
        on the device."""
        d = self.data
        with eval_mode(self.method):
            feats = extract_features(
                fn, self.images, d.mean, d.std, self.rt, 1024, self.memory_format
            )
        return feats.to(self.device)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return self.rt.autocast()

    # ---- the loop ------------------------------------------------------------------------
    def fit(self) -> Method:
        self.try_resume()
        cfg, method = self.cfg, self.method
        epochs = self.optim_cfg.epochs
        bar = tqdm(
            total=self.total_steps,
            initial=self.start_epoch * self.steps_per_epoch,
            desc=self.stage,
            disable=not (cfg.train.progress and dist.is_main()),
            dynamic_ncols=True,
            mininterval=0.5 if sys.stderr.isatty() else 30.0,  # logs stay readable
        )
        self.model.train()
        for epoch in range(self.start_epoch, epochs):
            self.epoch = epoch
            torch.manual_seed(epoch_seed(cfg.seed, epoch) + dist.rank())
            method.on_epoch_start(EpochContext(epoch, epochs, self.embed))
            index = batch_indices(len(self.images), self.optim_cfg.batch_size, cfg.seed, epoch)
            t0, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), device=self.device)
            for i, idx in enumerate(index):
                step = epoch * self.steps_per_epoch + i
                lr = lr_at(
                    step,
                    self.total_steps,
                    self.warmup_steps,
                    self.optim_cfg.lr,
                    self.optim_cfg.min_lr_ratio,
                )
                set_lr(self.optimizer, lr)
                v1, v2 = self.views(idx)
                with self.autocast():
                    loss, logs = self.model(v1, v2)
                if not torch.isfinite(loss):
                    raise NonFiniteLoss(
                        f"[{self.stage}] loss is {loss.item()} at epoch {epoch + 1}, step {i + 1}; "
                        f"the last good checkpoint {self.run_dir / LAST} is kept. Lower "
                        f"optim.lr or try train.precision=fp32, then run again to resume."
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                method.on_after_backward(step)
                self.optimizer.step()
                method.on_step_end(step, self.total_steps)
                seen += idx.numel() * dist.world_size()
                loss_sum += loss.detach()
                rate = seen / (time.perf_counter() - t0)
                if step % cfg.train.log_every == 0 or i == len(index) - 1:
                    row = {k: float(v) for k, v in logs.items()}
                    self.logger.log(self.stage, step, row | {"lr": lr, "img_per_s": rate})
                    bar.set_postfix(loss=f"{row['loss']:.3f}", img_s=f"{rate:.0f}", refresh=False)
                bar.update(1)
            summary = {
                "epoch": epoch + 1,
                "loss": float(loss_sum) / len(index),
                "img_per_s": seen / (time.perf_counter() - t0),
            }
            every = cfg.train.knn_every
            last = epoch + 1 == epochs
            if dist.is_main() and (last or (every and (epoch + 1) % every == 0)):
                for monitor in self.monitors:
                    summary |= monitor(self)
            self.logger.log(
                self.stage, (epoch + 1) * self.steps_per_epoch - 1, summary, kind="epoch"
            )
            self.save(epoch)
            dist.barrier()
        bar.close()
        self.logger.close()
        return method


def export_encoder(method: Method, cfg: Config, path: Path, extra: dict | None = None) -> None:
    """Write what evaluation and later stages load: encoder weights (+ prototypes)."""
    if not dist.is_main():
        return
    meta = {"method": method.name, "model": to_dict(cfg.model), "complete": True} | (extra or {})
    save_checkpoint(path, method.export_state(), meta)
