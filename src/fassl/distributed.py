"""Process-group helpers; every function works unchanged in a single process.

Under torchrun every rank runs the same command. Work that must happen once (the run
lock, settings records, exports, probes, reports) runs on rank 0 inside ``on_main``; work
every rank does outside the training loop (loading the data) runs inside ``on_all``. Both
end in one exchange of outcomes on a gloo group of their own, so every rank leaves them
together, and a failure on one rank stops the others at once with one line
(``PeerFailed``) instead of leaving them in a collective. A rank that fails in the
training loop leaves word in the group's store (``announce_stop``) and exits; its
closed gloo connections fail the others' next collective at once, and the command line
then names the rank that failed (``stopped_peer``) in one line.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import torch
import torch.distributed as dist

from fassl.errors import Interrupted, PeerFailed, RanksDiffer, describe
from fassl.processes import pid_alive, run_lock

T = TypeVar("T")
# Rank 0's own work (probes of a large set, an analysis) may take hours while the other
# ranks wait in the exchange; a rank that dies is seen at once, so this only bounds a hang.
CONTROL_TIMEOUT = timedelta(hours=24)
_STOPPED_KEY = "fassl/stopped/{rank}"  # in the group's store: this rank stopped, and how
_PROCESS_KEY = "fassl/process/{rank}"  # in the group's store: "<host> <pid>" of each rank
_control: dist.ProcessGroup | None = None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(device_type: str) -> bool:
    """Join the process group that torchrun describes in the environment, if any."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_distributed()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    _control_group()  # a collective: every rank makes it here, before any other work
    with contextlib.suppress(Exception):  # best effort: only names a rank that dies
        _store().set(_PROCESS_KEY.format(rank=rank()), f"{socket.gethostname()} {os.getpid()}")
    return True


def shutdown() -> None:
    """Leave the process group (after a command that succeeded on every rank)."""
    global _control
    if is_distributed():
        dist.destroy_process_group()
    _control = None


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def _control_group() -> dist.ProcessGroup:
    """The gloo group of the outcome exchanges: on the CPU whatever the training backend
    (NCCL would not notice a dead peer), with its own long timeout."""
    global _control
    if _control is None:
        _control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return _control


@dataclass(frozen=True)
class _Outcome:
    """What one rank says in an exchange: ok (with rank 0's shared result) or failed."""

    ok: bool
    value: Any = None
    message: str = ""  # the failure, as the failed rank prints it
    signum: int = 0  # an interrupt's signal; 0 for an error


def _outcome(value: Any, error: BaseException | None) -> _Outcome:
    if error is None:
        return _Outcome(True, value)
    if isinstance(error, KeyboardInterrupt):
        return _Outcome(False, message=str(error), signum=getattr(error, "signum", signal.SIGINT))
    return _Outcome(False, message=describe(error))


def _attempt(fn: Callable[[], T]) -> tuple[T | None, BaseException | None]:
    try:
        return fn(), None
    except BaseException as err:  # interrupts too: the other ranks must hear of them
        return None, err


def _exchange(mine: _Outcome) -> list[_Outcome]:
    gathered: list[Any] = [None] * world_size()
    try:
        dist.all_gather_object(gathered, mine, group=_control_group())
    except RuntimeError as err:  # a rank died: gloo reports its closed connection
        raise peer_stopped() from err
    return gathered


def _settle(error: BaseException | None, outcomes: list[_Outcome]) -> None:
    """Raise this rank's own error; else stop when another rank failed."""
    if error is not None:
        first = outcomes[0]
        if not is_main() and not first.ok and first.message == outcomes[rank()].message:
            raise peer_stopped((0, FAILED)) from error  # rank 0's failure too: it says it
        raise error
    for r, outcome in enumerate(outcomes):
        if not outcome.ok:
            if outcome.signum:
                _quiet_signals()
                raise Interrupted("", outcome.signum)
            raise peer_stopped((r, FAILED))


@overload
def on_main(fn: Callable[[], T]) -> T: ...
@overload
def on_main(fn: Callable[[], object], share: Literal[False]) -> None: ...


def on_main(fn: Callable[[], Any], share: bool = True) -> Any:
    """``fn()`` on rank 0 only; every rank returns when it is done, with its result
    (``share=False``: None, for results that stay on rank 0 or need no pickling). When
    it fails on rank 0, rank 0 raises its error and the other ranks ``PeerFailed``. Must
    be called by every rank at the same point, and ``fn`` itself must not run
    collectives."""
    if world_size() == 1:
        result = fn()
        return result if share else None
    result, error = _attempt(fn) if is_main() else (None, None)
    outcomes = _exchange(_outcome(result if share else None, error))
    _settle(error, outcomes)
    return outcomes[0].value if not is_main() else (result if share else None)


def on_all(fn: Callable[[], T]) -> T:
    """``fn()`` on every rank (no collectives inside); all return together, or all stop
    when it failed on any rank (that rank with its error, the others ``PeerFailed``)."""
    if world_size() == 1:
        return fn()
    result, error = _attempt(fn)
    _settle(error, _exchange(_outcome(None, error)))
    return result  # type: ignore[return-value]


def check_same(what: str, values: dict[str, Any], hint: str = "") -> None:
    """Every rank holds the same ``values`` (its resolved settings, its data's
    fingerprint); else every rank raises RanksDiffer naming the ranks that differ from
    rank 0 and the keys where they do. Ranks that disagree would otherwise train
    different things in step, wait in collectives that never match (a hang), or leave a
    record of rank 0's settings alone. Called by every rank at the same point."""
    if world_size() == 1:
        return
    gathered = [o.value for o in _exchange(_Outcome(True, values))]
    reference, missing = gathered[0], "(none)"
    differ = {
        r: [k for k in sorted(reference.keys() | v.keys()) if reference.get(k) != v.get(k)]
        for r, v in enumerate(gathered)
    }
    ranks = [r for r, keys in differ.items() if keys]
    if not ranks:
        return
    first = ranks[0]
    shown = "; ".join(
        f"{k} {reference.get(k, missing)!r} on rank 0, "
        f"{gathered[first].get(k, missing)!r} on rank {first}"
        for k in differ[first][:4]
    )
    more = f" and {len(differ[first]) - 4} more" if len(differ[first]) > 4 else ""
    who = f"rank {first}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
    _quiet_signals()  # every rank stops with this line: torchrun's SIGTERM must not cut it
    raise RanksDiffer(
        f"the processes of this run differ in their {what}: {who} against rank 0: "
        f"{shown}{more}{f' ({hint})' if hint else ''}"
    )


@contextlib.contextmanager
def main_lock(folder: str | os.PathLike[str]) -> Iterator[None]:
    """``fassl.processes.run_lock`` on ``folder``, taken and released by rank 0 alone: the
    other ranks wait until rank 0 holds it, or stop with its RunConflict."""
    with contextlib.ExitStack() as held:
        on_main(lambda: held.enter_context(run_lock(folder)), share=False)
        yield


def _store() -> Any:
    return dist.distributed_c10d._get_default_store()


FAILED, INTERRUPTED = "failed", "interrupted"  # how a rank stopped, as it announces it
ENDED = "ended"  # a rank whose process is gone without a word (SIGKILL, out of memory)


def announce_stop(how: str) -> None:
    """Leave word in the group's store that this rank stopped (``FAILED`` or
    ``INTERRUPTED``), for the ranks whose collective fails next because this process is
    gone (``stopped_peer``)."""
    if world_size() == 1:
        return
    # this rank is on its way out: torchrun's SIGTERM, sent when another rank ends, must
    # not cut the write (nor the one line that follows) with an interrupt's traceback
    _quiet_signals()
    with contextlib.suppress(Exception):  # best effort: the store may be gone
        _store().set(_STOPPED_KEY.format(rank=rank()), how)


def stopped_peer() -> tuple[int, str] | None:
    """(rank, how) of the first other rank that announced it stopped, or None."""
    if world_size() == 1:
        return None
    try:
        store = _store()
        for r in range(world_size()):
            key = _STOPPED_KEY.format(rank=r)
            if r != rank() and store.check([key]):
                return r, store.get(key).decode()
    except Exception:  # the store is gone: nobody can be asked
        return None
    return None


ENDED_WAIT_S = 3.0  # how long a lost peer's process may take to be listed as ended


def ended_peer(wait_s: float = ENDED_WAIT_S) -> tuple[int, str] | None:
    """(rank, ``ENDED``) of the first other rank on this machine whose process is gone
    (killed: it could not announce it stopped); None when every rank this machine can
    see still runs ``wait_s`` seconds on. A killed process closes its connections on its
    way out, a moment before the kernel lists it as ended: the look is repeated meanwhile."""
    if world_size() == 1:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        found = _ended_now()
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def _ended_now() -> tuple[int, str] | None:
    host = socket.gethostname()
    try:
        store = _store()
        for r in range(world_size()):
            key = _PROCESS_KEY.format(rank=r)
            if r == rank() or not store.check([key]):
                continue
            where, _, pid = store.get(key).decode().rpartition(" ")
            if where == host and pid.isdigit() and _gone(int(pid)):
                return r, ENDED
    except Exception:  # the store is gone (with the rank that held it): nobody to ask
        return None
    return None


def _gone(pid: int) -> bool:
    """Whether process ``pid`` ended: no such process, or a zombie its launcher has not
    reaped yet (Linux's /proc says so; elsewhere only the first counts)."""
    if not pid_alive(pid):
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] in ("Z", "X")  # after the command name
    return False


# what gloo says in a collective whose peer's process is gone (its connection closed)
_LOST_PEER = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")


def is_lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because another rank's connection
    closed, as torch raises it (a DistNetworkError, or gloo's RuntimeError from its
    transport); other backend errors (a CUDA error in NCCL) stay this rank's own."""
    if isinstance(err, dist.DistNetworkError):
        return True
    return isinstance(err, RuntimeError) and any(text in str(err) for text in _LOST_PEER)


def peer_failure(err: BaseException) -> PeerFailed | None:
    """This rank's one line when ``err`` came from another rank's end: a rank that
    announced it stopped, or a collective that failed because a rank's process is gone
    (named when it ran on this machine); None when ``err`` is this rank's own."""
    peer = stopped_peer()
    if peer is not None:
        return peer_stopped(peer)
    if is_lost_peer(err):  # a rank that fails announces it before its connections close
        _quiet_signals()  # torchrun's SIGTERM follows at once: keep this rank's one line
        return peer_stopped(ended_peer() or (-1, ENDED))
    return None


def peer_stopped(peer: tuple[int, str] | None = None) -> PeerFailed:
    """The error of a rank that stops because ``peer`` (rank, how; looked up when None)
    stopped. Further SIGTERM / SIGINT (torchrun stopping the group) are ignored from
    here on, so that this rank's one line is not replaced by an interrupt's."""
    peer = peer or stopped_peer()
    if peer is None or peer[0] < 0:
        what = "another process of this run ended"
    elif peer[1] == ENDED:
        what = f"rank {peer[0]}'s process ended without a word (killed, or out of memory)"
    else:
        what = f"rank {peer[0]} {'was interrupted' if peer[1] == INTERRUPTED else 'failed'}"
    _quiet_signals()
    return PeerFailed(f"rank {rank()} stopped: {what}")


def _quiet_signals() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, TypeError):  # not the main thread
            signal.signal(signum, signal.SIG_IGN)


def per_process_buffers() -> dict[str, bool]:
    """DistributedDataParallel's keyword for buffers that stay per process (queues, masks,
    BatchNorm statistics): ``forward_sync_buffers`` where torch has it (it deprecates
    ``broadcast_buffers``, which then warns on every rank). Either way DDP copies rank 0's
    buffers once at the start, where every rank holds the same ones (the same seed, or
    the same checkpoint)."""
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return {key: False}


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns to each rank the gradient of its own slice.

    The gradient of every rank's copy of the gathered tensor is summed over ranks
    (each rank's loss depends on all slices), then each rank keeps its slice.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        start = dist.get_rank() * n
        return grad[start : start + n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping this rank's gradient path."""
    if not is_distributed() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed() or world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def barrier() -> None:
    if is_distributed():
        dist.barrier()
