"""The one training loop every method runs under.

It owns the device and process group, autocast, the optimizer and its per-step schedule,
checkpoints and resume, logging and the progress bar. A method only turns two augmented
views into a loss (``fassl.methods.base.Method``).

Determinism: the data order and the augmentation of epoch ``e`` depend only on
(seed, e, rank), so a run resumed from the checkpoint of epoch ``e - 1`` continues
exactly as the uninterrupted run would have.

Speed: a step never waits for the device. The loss and the logged scalars stay on the
device and are read (together with the finite-loss check) every ``train.log_every``
steps and at the end of each epoch, in one transfer; checkpoints are written by wall
clock (``train.checkpoint_every_s``) and at the end; features of the training set are
extracted once per optimizer step whoever asks (``Trainer.embed``).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from fassl import distributed as dist
from fassl.augment.views import TwoViewAugment
from fassl.config import Config, OptimConfig, to_dict
from fassl.data import LongTailData
from fassl.errors import Interrupted, NonFiniteLoss, RunConflict
from fassl.features import backbone_forward, eval_mode, prepare_batch
from fassl.methods.base import EpochContext, Method, training_labels
from fassl.models.state import load_state_checked
from fassl.names import LAST
from fassl.runtime import Runtime
from fassl.train.checkpoint import (
    load_checkpoint,
    load_optimizer_state,
    non_finite,
    optimizer_state,
    prefixed,
    remove_stale_temporaries,
    save_checkpoint,
    split_prefixed,
)
from fassl.train.compile import CompiledForward, wants_compile
from fassl.train.logger import MetricLogger
from fassl.train.optim import build_optimizer, lr_at, set_lr

EMBED_BATCH = 1024


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


def read_scalars(values: list[torch.Tensor]) -> list[float]:
    """Device scalars as floats in one transfer: the only place a step waits for the device."""
    if not values:
        return []
    device = values[0].device
    return torch.stack([v.detach().float().reshape(()).to(device) for v in values]).tolist()


def training_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 tensors go to the device whole (CIFAR-size sets are small); a lazy,
    tensor-like collection (a streaming decoder) stays on the host, indexed per batch."""
    return images.to(device) if isinstance(images, torch.Tensor) else images


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
        self.memory_format = runtime.memory_format_for(method)  # the layout rule
        # Labels go only to a method that declares ``needs_labels`` (the supervised
        # reference); attach_data comes before the optimizer is built.
        labels = training_labels(method, data)
        method.attach_data(data)
        self.labels = None if labels is None else labels.to(self.device)
        method.to(self.device, memory_format=self.memory_format)
        self.model: nn.Module = method
        if dist.world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Buffers (queues, masks, BN statistics) stay per process: no broadcast.
            self.model = nn.parallel.DistributedDataParallel(
                method, device_ids=ids, **dist.per_process_buffers()
            )
        self.forward = CompiledForward(self.model, wants_compile(cfg.train.compile, self.device))
        self.optimizer = build_optimizer(method, optim_cfg)
        self.images = training_images(data.pretrain.images, self.device)
        self.images_on_device = isinstance(self.images, torch.Tensor)  # else lazy, on the host
        self.augment = TwoViewAugment(
            cfg.augment, data.image_size, data.mean, data.std, method.boost
        ).to(self.device)
        self.steps_per_epoch = len(data.pretrain) // optim_cfg.batch_size
        self.total_steps = self.steps_per_epoch * optim_cfg.epochs
        self.warmup_steps = round(optim_cfg.warmup_epochs * self.steps_per_epoch)
        self.start_epoch = 0
        # Label-using measurements (analysis only: kNN accuracy, weight enrichment) after
        # every ``train.knn_every`` epochs and the last one; they see ``self.epoch``.
        self.monitors = monitors or []
        self.epoch = 0
        self.global_step = 0  # optimizer steps taken, counting those before a resume
        self.lr = optim_cfg.lr
        self.saved_epoch: int | None = None
        self.epoch_ends: list[float] = []  # perf_counter after each epoch (benchmarks)
        self._last_save = time.monotonic()
        self._embed_memo: tuple[tuple, torch.Tensor] | None = None
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
        """The checkpoint after ``epoch``, only of finite state: a model whose parameters
        or buffers (BatchNorm statistics) went NaN or infinite while the loss still read
        finite stops here, and the last good checkpoint stays the last one written."""
        state = self.method.state_dict()
        bad = non_finite(state)
        if bad:
            what = f"{len(bad)} tensors of the model's state hold NaN or inf (e.g. {bad[:3]})"
            raise NonFiniteLoss(self._non_finite_message(what, epoch, self.steps_per_epoch - 1))
        self._last_save, self.saved_epoch = time.monotonic(), epoch
        if not dist.is_main():
            return
        opt_tensors, groups = optimizer_state(self.optimizer)
        meta = self.checkpoint_meta(epoch) | {"optimizer_groups": groups}
        tensors = prefixed(state, "model") | prefixed(opt_tensors, "optim")
        save_checkpoint(self.run_dir / LAST, tensors, meta)

    def checkpoint_due(self, last: bool) -> bool:
        """After the last epoch always; otherwise once ``train.checkpoint_every_s``
        seconds have passed since the previous checkpoint (0: after every epoch)."""
        every = self.cfg.train.checkpoint_every_s
        return last or every <= 0 or time.monotonic() - self._last_save >= every

    def try_resume(self) -> None:
        path = self.run_dir / LAST
        remove_stale_temporaries(path.parent)  # of saves killed before their rename
        if not path.is_file():
            return
        tensors, meta = load_checkpoint(path)
        if meta.get("method") != self.method.name or meta.get("stage") != self.stage:
            raise RunConflict(
                f"{path} belongs to stage {meta.get('stage')!r} (method {meta.get('method')!r}), "
                f"not to {self.stage!r}: use another out_dir"
            )
        state = self.method.upgrade_state(split_prefixed(tensors, "model"))
        load_state_checked(self.method, state, str(path))
        load_optimizer_state(
            self.optimizer, split_prefixed(tensors, "optim"), meta["optimizer_groups"]
        )
        self.start_epoch = int(meta["epoch"]) + 1
        self.saved_epoch = int(meta["epoch"])
        self.global_step = self.start_epoch * self.steps_per_epoch
        self.logger.resume_at(self.global_step)  # drop rows logged after the checkpoint
        if dist.is_main():
            print(f"[{self.stage}] resuming from {path} after epoch {meta['epoch'] + 1}")

    # ---- helpers for methods and monitors ----------------------------------------------
    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 training images ``index`` on the device, from the device tensor or, for a
        lazy set, decoded on the host."""
        if self.images_on_device:
            return self.images[index.to(self.device, non_blocking=True)]
        return torch.as_tensor(self.images[index.cpu()]).to(self.device, non_blocking=True)

    def views(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.rows(index)
        with torch.no_grad():
            v1, v2 = self.augment(batch, self.method.view_strength(index))
        return (
            v1.contiguous(memory_format=self.memory_format),
            v2.contiguous(memory_format=self.memory_format),
        )

    def embed(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Features of all training images (no augmentation) through ``fn``, in eval mode,
        on the device.

        Memoised by (``fn``, optimizer step): a stage-2 bank made at an epoch's start and
        a monitor at the previous epoch's end see the same weights and share one
        extraction. The result is shared: callers must not modify it in place.
        """
        key = (fn, self.global_step)
        if self._embed_memo is not None and self._embed_memo[0] == key:
            return self._embed_memo[1]
        self._embed_memo = None  # free the previous features before extracting new ones
        feats = self._extract(fn)
        self._embed_memo = (key, feats)
        return feats

    @torch.no_grad()
    def _extract(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        d, n = self.data, len(self.images)
        chunks = []
        with eval_mode(self.method):
            for start in range(0, n, EMBED_BATCH):
                rows = self.rows(torch.arange(start, min(n, start + EMBED_BATCH)))
                x = prepare_batch(rows, d.mean, d.std, self.device, self.memory_format)
                chunks.append(backbone_forward(fn, x, self.rt))
        return torch.cat(chunks)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return self.rt.autocast()

    def forward_extras(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What a method reads besides the two views: the batch's labels (``needs_labels``),
        then its image indices (``needs_index``)."""
        extras: tuple[torch.Tensor, ...] = ()
        if self.labels is not None:
            extras += (self.labels[index.to(self.device)],)
        if self.method.needs_index:
            extras += (index.to(self.device),)
        return extras

    # ---- the loop ------------------------------------------------------------------------
    def train_step(
        self, index: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step on the images ``index`` at global step ``step``. Returns the
        detached loss and the method's logged scalars, still on the device: nothing here
        waits for the device."""
        o = self.optim_cfg
        self.lr = lr_at(step, self.total_steps, self.warmup_steps, o.lr, o.min_lr_ratio)
        set_lr(self.optimizer, self.lr)
        self.method.on_step_start(step, self.total_steps)
        v1, v2 = self.views(index)
        extra = self.forward_extras(index)
        with self.autocast():
            loss, logs = self.forward(v1, v2, *extra)
        self.optimizer.zero_grad(set_to_none=True)
        if not self.forward.backward(loss):  # the compiled backward failed: redo eagerly
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                loss, logs = self.forward(v1, v2, *extra)
            loss.backward()
        self.method.on_after_backward(step)
        self.optimizer.step()
        self.method.on_step_end(step, self.total_steps)
        self.global_step = step + 1
        return loss.detach(), logs

    def fit(self) -> Method:
        self.try_resume()
        bar = tqdm(
            total=self.total_steps,
            initial=self.start_epoch * self.steps_per_epoch,
            desc=self.stage,
            disable=not (self.cfg.train.progress and dist.is_main()),
            dynamic_ncols=True,
            mininterval=0.5 if sys.stderr.isatty() else 30.0,  # logs stay readable
        )
        self.model.train()
        self._last_save = time.monotonic()
        try:
            for epoch in range(self.start_epoch, self.optim_cfg.epochs):
                self.epoch = epoch
                bar.set_description(f"{self.stage} epoch {epoch + 1}/{self.optim_cfg.epochs}")
                summary = self._train_epoch(epoch, bar)
                self._end_epoch(epoch, summary)
        except KeyboardInterrupt as err:
            if isinstance(err, Interrupted) and str(err):
                raise  # already says where (a nested stage)
            raise self._interrupted(err) from err
        finally:
            bar.close()
            self.logger.close()
        return self.method

    def _train_epoch(self, epoch: int, bar: tqdm) -> dict[str, float]:
        cfg = self.cfg
        torch.manual_seed(epoch_seed(cfg.seed, epoch) + dist.rank())
        self.method.on_epoch_start(EpochContext(epoch, self.optim_cfg.epochs, self.embed))
        index = batch_indices(len(self.images), self.optim_cfg.batch_size, cfg.seed, epoch)
        if self.images_on_device:
            index = index.to(self.device, non_blocking=True)
        t0, seen = time.perf_counter(), 0
        loss_sum = torch.zeros((), device=self.device)
        window: list[tuple[int, torch.Tensor]] = []  # losses not yet checked
        values: list[float] = []
        for i, idx in enumerate(index):
            step = epoch * self.steps_per_epoch + i
            loss, logs = self.train_step(idx, step)
            loss_sum += loss
            window.append((i, loss))
            seen += idx.numel() * dist.world_size()
            last = i == len(index) - 1
            if step % cfg.train.log_every == 0 or last:
                values = self._flush(window, [*logs.values(), loss_sum], epoch)
                row = dict(zip(logs, values, strict=False))
                rate = seen / (time.perf_counter() - t0)
                self.logger.log(self.stage, step, row | {"lr": self.lr, "img_per_s": rate})
                bar.set_postfix(loss=f"{row['loss']:.3f}", img_s=f"{rate:.0f}", refresh=False)
            bar.update(1)
        return {
            "epoch": epoch + 1,
            "loss": values[-1] / len(index),
            "img_per_s": seen / (time.perf_counter() - t0),
        }

    def _flush(
        self, window: list[tuple[int, torch.Tensor]], values: list[torch.Tensor], epoch: int
    ) -> list[float]:
        """Read the unchecked losses and ``values`` in one transfer; raise NonFiniteLoss at
        the first non-finite loss of the window (so within ``train.log_every`` steps)."""
        read = read_scalars([loss for _, loss in window] + values)
        for (i, _), value in zip(window, read, strict=False):
            if not math.isfinite(value):
                raise NonFiniteLoss(self._non_finite_message(value, epoch, i))
        checked = len(window)
        window.clear()
        return read[checked:]

    def _non_finite_message(self, what: float | str, epoch: int, i: int) -> str:
        """Where training diverged and what is kept; how to train again is the caller's
        to add (``fassl.runs.stage`` names the --restart that applies)."""
        path = self.run_dir / LAST
        if self.saved_epoch is not None:
            kept = f"the last good checkpoint {path} (after epoch {self.saved_epoch + 1}) is kept"
        else:
            kept = "no checkpoint was written yet"
        found = f"loss is {what}" if isinstance(what, float) else what
        return f"[{self.stage}] {found} at epoch {epoch + 1}, step {i + 1}; {kept}"

    def _interrupted(self, err: KeyboardInterrupt) -> Interrupted:
        """Ctrl-C or SIGTERM: where training stopped and what the same command resumes."""
        step = self.global_step - self.epoch * self.steps_per_epoch
        if self.saved_epoch is not None:
            kept = (
                f"{self.run_dir / LAST} (after epoch {self.saved_epoch + 1}) is intact "
                "and the same command resumes from it"
            )
        else:
            kept = "no checkpoint was written yet, so the same command starts this stage over"
        message = f"[{self.stage}] interrupted at epoch {self.epoch + 1} step {step + 1}; {kept}"
        return Interrupted(message, getattr(err, "signum", signal.SIGINT))

    def _end_epoch(self, epoch: int, summary: dict[str, float]) -> None:
        every = self.cfg.train.knn_every
        last = epoch + 1 == self.optim_cfg.epochs
        if dist.is_main() and (last or (every and (epoch + 1) % every == 0)):
            for monitor in self.monitors:
                summary |= monitor(self)
        self.logger.log(self.stage, (epoch + 1) * self.steps_per_epoch - 1, summary, kind="epoch")
        if self.checkpoint_due(last):
            self.save(epoch)
        dist.barrier()
        self.epoch_ends.append(time.perf_counter())
