"""Processes: whether one still runs, and the lock a run holds on its folder.

Checkpoint temporaries, archive extraction and run locks all ask whether the process
that left a file behind is gone. Standard library only (and the package's errors).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fassl.errors import RunConflict


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (this process counts as not running: what it left
    behind in an earlier call is a leftover). For temporary files named by their writer."""
    if pid == os.getpid():
        return False  # this process is not writing it now: a leftover of an earlier call
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


LOCK = ".fassl.lock"
_HELD: dict[Path, int] = {}  # folders this process holds, and how deeply (re-entrant)


def lock_holder(folder: Path) -> dict[str, Any] | None:
    """What the lock file of ``folder`` says (pid, host, started, command), or None when
    there is none; an unreadable lock reads as an empty holder."""
    try:
        text = (folder / LOCK).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def is_stale(holder: dict[str, Any]) -> bool:
    """A lock whose process has died on this host (or whose file is unreadable: locks
    appear whole, so that is damage, not a run still writing it)."""
    pid, host = holder.get("pid"), holder.get("host")
    if not isinstance(pid, int):
        return True
    return host == socket.gethostname() and not pid_alive(pid)


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold ``folder`` for this run: a second run into it fails at once naming the first
    (RunConflict), a lock left by a killed run is taken over, nested use by the same
    process is allowed. The lock file appears complete or not at all
    (``_create_complete``), so two runs starting together cannot both get it. Under
    torchrun only rank 0 takes it, through ``fassl.distributed.main_lock``: the other
    processes of the same run would otherwise find it held by rank 0."""
    path = Path(folder).absolute()
    if _HELD.get(path):
        _HELD[path] += 1
        try:
            yield
        finally:
            _HELD[path] -= 1
        return
    path.mkdir(parents=True, exist_ok=True)
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(sys.argv)[:300],
    }
    for _ in range(3):  # a stale lock is removed, then taken: retry a couple of times
        if _create_complete(path / LOCK, json.dumps(me)):
            break
        holder = lock_holder(path)
        if holder is not None and not is_stale(holder):
            raise RunConflict(_busy(path, holder))
        (path / LOCK).unlink(missing_ok=True)  # its run was killed: take it over
    else:
        raise RunConflict(_busy(path, lock_holder(path) or {}))
    _HELD[path] = 1
    try:
        yield
    finally:
        _HELD.pop(path, None)
        if (lock_holder(path) or {}).get("pid") == os.getpid():
            (path / LOCK).unlink(missing_ok=True)


def _create_complete(lock: Path, text: str) -> bool:
    """Create ``lock`` holding ``text``, whole or not at all; False when it exists.

    Written under a temporary name and hard-linked into place (the link fails on an
    existing name, as O_EXCL does), so a run racing for the folder never reads a
    half-written lock, which it would take for a killed run's. Where the file system has
    no hard links, the lock is created with O_EXCL and written after."""
    tmp = lock.with_name(f"{lock.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here
        pass
    finally:
        tmp.unlink(missing_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return True


def _busy(path: Path, holder: dict[str, Any]) -> str:
    who = (
        f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
        f"{holder.get('started', '?')}"
    )
    return (
        f"{path} is in use by another run ({who}): wait for it to finish or use another "
        f"out_dir (if that run is gone, delete {path / LOCK})"
    )
