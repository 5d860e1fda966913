"""The one training loop every method runs under.

It owns the device and process group, autocast, the optimizer and its per-step schedule,
checkpoints and resume, logging and the progress bar. A method only turns two augmented
views into a loss (``fassl.methods.base.Method``).

Determinism: the data order and the augmentation of epoch ``e`` depend only on
(seed, e, rank), so a run resumed from the checkpoint of epoch ``e - 1`` continues
exactly as the uninterrupted run would have. A checkpoint inside an epoch also holds
every rank's random state and what the method derived at the epoch's start
(``Method.epoch_state``), so a run resumed from step ``i`` of an epoch takes the same
batches, the same augmentations and the same weights as the uninterrupted run.

Speed: a step never waits for the device. The loss and the logged scalars stay on the
device and are read (together with the finite-loss check) every ``train.log_every``
steps and at the end of each epoch, in one transfer; checkpoints are written by wall
clock (``train.checkpoint_every_s``), looked at on those reads, inside an epoch too, and
at the end; Ctrl-C or SIGTERM is taken at the next step's end, where a checkpoint of that
step is written before the run stops; features of the training set are extracted once per
optimizer step whoever asks (``Trainer.embed``).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from fassl import distributed as dist
from fassl.augment.views import ViewAugment
from fassl.config import Config, OptimConfig, optim_key, to_dict
from fassl.data import LongTailData
from fassl.data.memory import check_fits
from fassl.errors import ConfigError, DataError, Interrupted, NonFiniteLoss, printable
from fassl.features import backbone_forward, eval_mode, image_chunks, prepare_batch
from fassl.methods.base import EpochContext, Method, training_labels
from fassl.models import check_backbone
from fassl.models.state import load_state_checked
from fassl.names import LAST
from fassl.registry import ROOT_DATASETS
from fassl.runtime import Runtime
from fassl.train.checkpoint import (
    check_owner,
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
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch * 7919


def check_batch_size(cfg: Config, data: LongTailData, optim_cfg: OptimConfig) -> None:
    """A batch larger than the pre-training set would train zero steps an epoch; under
    torchrun the global batch must split evenly over the processes."""
    n, batch, world = len(data.pretrain), optim_cfg.batch_size, dist.world_size()
    if n < 2:  # no batch size can fit: a batch needs two images (the key's own range)
        where = cfg.data.root if cfg.data.dataset in ROOT_DATASETS else data.name
        raise DataError(
            f"{printable(where)} has too few images to train: {n} pre-training image"
            f"{'' if n == 1 else 's'}, at least 2 needed (a batch holds two images or more)"
        )
    if batch > n:
        raise ConfigError(
            f"config key '{optim_key(cfg, optim_cfg)}.batch_size' ({batch}) is larger than the "
            f"{n:,} pre-training images of {data.name}; lower it to at most {n}"
        )
    if batch % world:  # the global batch is split evenly over the processes
        raise ConfigError(
            f"config key '{optim_key(cfg, optim_cfg)}.batch_size' ({batch}) does not split "
            f"evenly over {world} processes; make it a multiple of {world}"
        )


def batch_indices(n: int, batch_size: int, seed: int, epoch: int) -> torch.Tensor:
    """This process's share of each global batch of epoch ``epoch``: (steps, batch/world).

    The permutation is the same on every rank; rank r takes the r-th slice of each global
    batch, so the global batch is the same for any number of processes.
    """
    world, rank = dist.world_size(), dist.rank()
    steps = n // batch_size  # at least 1, and batch_size splits over world (check_batch_size)
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
    tensor-like collection (the image store, memory-mapped) stays on the host, read per batch."""
    return images.to(device) if isinstance(images, torch.Tensor) else images


@dataclass
class Resume:
    """What a checkpoint written inside an epoch restores once that epoch has started."""

    epoch: int
    step: int  # steps of ``epoch`` already taken
    model: dict[str, torch.Tensor]  # the method's state (re-applied after on_epoch_start)
    epoch_state: dict[str, torch.Tensor]  # Method.epoch_state()
    rng: dict[str, torch.Tensor]  # "cpu" / "device": (world, n) uint8 states, one per rank
    loss_sum: float


def random_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random generators: the CPU's and the device's (uint8 tensors)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["device"] = torch.cuda.get_rng_state(device)
    return state


def set_random_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "device" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["device"], device)


class StopRequest:
    """Ctrl-C and SIGTERM taken at a step's end instead of wherever they land.

    The first signal is remembered (``signum``); the loop checkpoints the step it ends
    and stops. A second one stops at once, as without this (a step that never ends
    can still be interrupted). Handlers can only be set on the main thread; elsewhere
    (the Python API from a thread) signals keep their own handlers.
    """

    def __init__(self) -> None:
        self.signum = 0

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum:
            raise Interrupted("", signum)
        self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        # an ignored signal stays ignored (a background job's SIGINT, torchrun's peers)
        for sig in STOP_SIGNALS:
            if previous[sig] is not signal.SIG_IGN:
                signal.signal(sig, self._handle)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


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
        check_batch_size(cfg, data, optim_cfg)  # a whole number of batches every epoch
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
        # refused here, before any step, when the run cannot hold what it needs
        check_fits(data, int(getattr(method.backbone, "out_dim", 0)))
        self.images = training_images(data.pretrain.images, self.device)
        self.images_on_device = isinstance(self.images, torch.Tensor)  # else lazy, on the host
        # a library backbone must take every view size the method declares (DINO's local
        # crops: a ViT built for one size cannot), said before the first step
        spec = method.view_spec
        for size in {spec.global_size or data.image_size, spec.local_size or data.image_size}:
            if size == data.image_size:
                continue
            try:
                check_backbone(cfg.model.arch, cfg.model.kwargs, size)
            except ConfigError as err:
                raise ConfigError(
                    f"config key 'model.arch': {cfg.model.arch} cannot take the {size} px "
                    f"crops that method {method.name!r} trains on beside its "
                    f"{data.image_size} px ones: give the model more than one input size "
                    "(a timm ViT: model.kwargs with dynamic_img_size: true, dynamic_img_pad: "
                    f"true), or train without those crops ({method.name}.local_crops=0)"
                ) from err
        # the views the method declares (two global views of cfg.augment by default)
        self.augment = ViewAugment(
            cfg.augment, data.image_size, data.mean, data.std, method.boost, method.view_spec
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
        self.saved_step = 0  # steps of ``saved_epoch`` the last checkpoint holds
        self.resume: Resume | None = None  # a checkpoint inside an epoch, until it starts
        self.stop = StopRequest()
        self.epoch_ends: list[float] = []  # perf_counter after each epoch (benchmarks)
        self._last_save = time.monotonic()
        self._embed_memo: tuple[tuple, torch.Tensor] | None = None
        self.logger = MetricLogger(self.run_dir, enabled=dist.is_main())

    # ---- checkpoints -------------------------------------------------------------------
    def checkpoint_meta(self, epoch: int, step: int | None = None) -> dict:
        """``step``: the steps of ``epoch`` taken (all of them for an epoch's end)."""
        return {
            "stage": self.stage,
            "method": self.method.name,
            "model": to_dict(self.cfg.model),
            "epoch": epoch,
            "step": self.steps_per_epoch if step is None else step,
            "epochs": self.optim_cfg.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": dist.world_size(),
        }

    def save(self, epoch: int, step: int | None = None, loss_sum: float = 0.0) -> None:
        """The checkpoint after ``step`` steps of ``epoch`` (None: the whole epoch), only
        of finite state: a model whose parameters or buffers (BatchNorm statistics) went
        NaN or infinite while the loss still read finite stops here, and the last good
        checkpoint stays the last one written.

        Inside an epoch every rank takes part (its random state is gathered), so all
        ranks call this at the same step; at an epoch's end only rank 0 writes.
        """
        state = self.method.state_dict()
        bad = non_finite(state)
        if bad:
            what = f"{len(bad)} tensors of the model's state hold NaN or inf (e.g. {bad[:3]})"
            at = self.steps_per_epoch if step is None else step
            raise NonFiniteLoss(self._non_finite_message(what, epoch, at - 1))
        tensors = prefixed(state, "model")
        meta = self.checkpoint_meta(epoch, step)
        if step is not None:  # inside an epoch: what resuming at this very step needs
            for name, value in random_state(self.device).items():
                gathered = dist.gather_no_grad(value.to(self.device)[None])
                tensors[f"rng/{name}"] = gathered.cpu()
            tensors |= prefixed(self.method.epoch_state(), "epoch")
            meta["loss_sum"] = loss_sum
        self._last_save, self.saved_epoch = time.monotonic(), epoch
        self.saved_step = self.steps_per_epoch if step is None else step
        if not dist.is_main():
            return
        opt_tensors, groups = optimizer_state(self.optimizer)
        meta["optimizer_groups"] = groups
        tensors |= prefixed(opt_tensors, "optim")
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
        check_owner(path, meta, self.stage, self.method.name)
        state = self.method.upgrade_state(split_prefixed(tensors, "model"))
        load_state_checked(self.method, state, str(path))
        load_optimizer_state(
            self.optimizer, split_prefixed(tensors, "optim"), meta["optimizer_groups"]
        )
        epoch = int(meta["epoch"])
        step = int(meta.get("step", self.steps_per_epoch))  # older files: whole epochs
        self.saved_epoch, self.saved_step = epoch, step
        where = f"after epoch {epoch + 1}"
        if step < self.steps_per_epoch:
            self.start_epoch = epoch
            self.resume = Resume(
                epoch,
                step,
                state,
                split_prefixed(tensors, "epoch"),
                split_prefixed(tensors, "rng"),
                float(meta.get("loss_sum", 0.0)),
            )
            where = f"at epoch {epoch + 1} step {step + 1}"
        else:
            self.start_epoch = epoch + 1
        self.global_step = epoch * self.steps_per_epoch + step
        self.logger.resume_at(self.global_step)  # drop rows logged after the checkpoint
        if dist.is_main():
            print(f"[{self.stage}] resuming from {path} {where}")

    def _resume_inside(self, epoch: int) -> tuple[int, float]:
        """At the start of the epoch a checkpoint left inside: restore the state the
        method derived at that epoch's start, the weights as they were at the step, and
        each rank's random state. Returns (steps already taken, their summed loss)."""
        resume, self.resume = self.resume, None
        if resume is None or resume.epoch != epoch:
            return 0, 0.0
        # on_epoch_start has just recomputed from the saved weights; the saved step's own
        # state (SDCLR's masks, BCL's strengths, stage 2's fitted weight) is what counts
        load_state_checked(self.method, resume.model, str(self.run_dir / LAST))
        self.method.load_epoch_state(resume.epoch_state)
        states = {name: rows for name, rows in resume.rng.items()}
        if states and states["cpu"].shape[0] == dist.world_size():
            # a row of the stacked states: torch reads a generator's state from offset 0
            mine = {k: v[dist.rank()].clone() for k, v in states.items()}
            set_random_state(mine, self.device)
        elif states and dist.is_main():
            print(
                f"[{self.stage}] the checkpoint was written by {states['cpu'].shape[0]} "
                f"processes, not {dist.world_size()}: the rest of epoch {epoch + 1} takes the "
                "same batches with other augmentations than an uninterrupted run"
            )
        return resume.step, resume.loss_sum

    # ---- helpers for methods and monitors ----------------------------------------------
    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 training images ``index`` on the device, from the device tensor or, for a
        lazy set, decoded on the host."""
        if self.images_on_device:
            return self.images[index.to(self.device, non_blocking=True)]
        return torch.as_tensor(self.images[index.cpu()]).to(self.device, non_blocking=True)

    def views(self, index: torch.Tensor, rows: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The views of the images ``index`` (``rows``: those images, when a loader has
        read them already) that the method declares (``view_spec``), in its order, in
        the method's memory layout."""
        batch = self.rows(index) if rows is None else rows.to(self.device, non_blocking=True)
        with torch.no_grad():
            views = self.augment(batch, self.method.view_strength(index))
        return [v.contiguous(memory_format=self.memory_format) for v in views]

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
        d = self.data
        chunks = []
        with eval_mode(self.method):
            # a lazy set's next chunks decode in its loader workers while this one runs
            for rows in image_chunks(self.images, EMBED_BATCH):
                x = prepare_batch(rows, d.mean, d.std, self.device, self.memory_format)
                chunks.append(backbone_forward(fn, x, self.rt))
        return torch.cat(chunks)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return self.rt.autocast()

    def forward_extras(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What a method reads besides the views: the batch's labels (``needs_labels``),
        then its image indices (``needs_index``)."""
        extras: tuple[torch.Tensor, ...] = ()
        if self.labels is not None:
            extras += (self.labels[index.to(self.device)],)
        if self.method.needs_index:
            extras += (index.to(self.device),)
        return extras

    # ---- the loop ------------------------------------------------------------------------
    def train_step(
        self, index: torch.Tensor, step: int, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step on the images ``index`` at global step ``step`` (``rows``:
        their pixels, read ahead by a loader). Returns the detached loss and the method's
        logged scalars, still on the device: nothing here waits for the device."""
        o = self.optim_cfg
        self.lr = lr_at(step, self.total_steps, self.warmup_steps, o.lr, o.min_lr_ratio)
        set_lr(self.optimizer, self.lr)
        self.method.on_step_start(step, self.total_steps)
        views = self.views(index, rows)
        extra = self.forward_extras(index)
        with self.autocast():
            loss, logs = self.forward(views, *extra)
        self.optimizer.zero_grad(set_to_none=True)
        if not self.forward.backward(loss):  # the compiled backward failed: redo eagerly
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                loss, logs = self.forward(views, *extra)
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
            with self.stop.installed():
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
        first, done_loss = self._resume_inside(epoch)
        index = batch_indices(len(self.images), self.optim_cfg.batch_size, cfg.seed, epoch)
        if self.images_on_device:
            index = index.to(self.device, non_blocking=True)
        t0, seen = time.perf_counter(), 0
        loss_sum = torch.full((), done_loss, device=self.device)
        window: list[tuple[int, torch.Tensor]] = []  # losses not yet checked
        values: list[float] = []
        # a lazy set reads (and decodes) the next batches while this one trains
        ahead = None if self.images_on_device else self.images.batches(index[first:])
        for i in range(first, len(index)):
            idx = index[i]
            step = epoch * self.steps_per_epoch + i
            loss, logs = self.train_step(idx, step, None if ahead is None else next(ahead))
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
                if not last:
                    self._checkpoint_inside(epoch, i + 1, values[-1])
            elif self.stop.signum and not dist.is_distributed():
                # alone, a stop needs no agreement: checkpoint this step now
                values = self._flush(window, [loss_sum], epoch)
                self._checkpoint_inside(epoch, i + 1, values[-1])
            bar.update(1)
        if self.stop.signum:  # at the epoch's last step: its end writes the checkpoint
            self._end_epoch(epoch, self._epoch_summary(epoch, values, len(index), seen, t0))
            raise self._stopped()
        return self._epoch_summary(epoch, values, len(index), seen, t0)

    def _epoch_summary(
        self, epoch: int, values: list[float], steps: int, seen: int, t0: float
    ) -> dict[str, float]:
        return {
            "epoch": epoch + 1,
            "loss": values[-1] / steps,
            "img_per_s": seen / max(time.perf_counter() - t0, 1e-9),
        }

    def _checkpoint_inside(self, epoch: int, step: int, loss_sum: float) -> None:
        """At a read of the device (so no extra wait): write a checkpoint of the ``step``
        steps of ``epoch`` taken when one is due or a stop was asked for, then stop for
        the latter. All ranks agree first: rank 0's clock, any rank's stop."""
        every = self.cfg.train.checkpoint_every_s  # 0: at epochs' ends only
        due = [float(every > 0 and self.checkpoint_due(False)), float(self.stop.signum)]
        if dist.is_distributed():
            flags = torch.tensor(due, device=self.device)[None]
            gathered = dist.gather_no_grad(flags).cpu()
            due = [float(gathered[0, 0]), float(gathered[:, 1].max())]
            self.stop.signum = self.stop.signum or int(due[1])
        if due[0] or due[1]:
            self.save(epoch, step, loss_sum)
        if due[1]:
            raise self._stopped()

    def _stopped(self) -> Interrupted:
        """A stop taken at a step's end, once its checkpoint is written."""
        message = (
            f"[{self.stage}] interrupted at epoch {self.epoch + 1} step {self.saved_step}: "
            f"{self.run_dir / LAST} holds that step and the same command resumes from it"
        )
        return Interrupted(message, self.stop.signum)

    def _saved_where(self) -> str:
        """Where the last checkpoint stands, as the messages say it."""
        if self.saved_step >= self.steps_per_epoch:
            return f"after epoch {self.saved_epoch + 1}"  # type: ignore[operator]
        return f"at epoch {self.saved_epoch + 1} step {self.saved_step}"  # type: ignore[operator]

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
            kept = f"the last good checkpoint {path} ({self._saved_where()}) is kept"
        else:
            kept = "no checkpoint was written yet"
        found = f"loss is {what}" if isinstance(what, float) else what
        return f"[{self.stage}] {found} at epoch {epoch + 1}, step {i + 1}; {kept}"

    def _interrupted(self, err: KeyboardInterrupt) -> Interrupted:
        """Ctrl-C or SIGTERM: where training stopped and what the same command resumes."""
        step = self.global_step - self.epoch * self.steps_per_epoch
        if self.saved_epoch is not None:
            kept = (
                f"{self.run_dir / LAST} ({self._saved_where()}) is intact "
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
        if self.checkpoint_due(last or bool(self.stop.signum)):
            self.save(epoch)
        dist.barrier()
        self.epoch_ends.append(time.perf_counter())
