"""Writing outputs so that a failure leaves the previous ones, or none, never half a file.

Every file a command writes for people or for later commands goes to a temporary name
beside its final one and is renamed over it when complete (``os.replace`` is atomic on
one file system). A command writing several files that belong together (``embeddings.npy``
with ``index.csv``) writes them all first and renames them together (``OutputSet``), so a
failure half way leaves the previous set. Every output gets the mode a plain ``open()``
would give it (0666 less the umask), whichever writer made the temporary file: tempfile and
safetensors create theirs 0600. A leaf module: standard library only.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from fassl.errors import DiskFull

TMP_MARK = ".tmp-"  # temporaries are ".<stem>.tmp-<pid><suffix>": the suffix kept for writers
MARGIN = 1 << 20  # bytes kept free beyond what a write needs


def temporary(path: Path) -> Path:
    """The temporary name of ``path``: hidden, with the writer's pid, same suffix (so that
    writers choosing a format by suffix, like matplotlib and numpy, still do)."""
    return path.with_name(f".{path.stem}{TMP_MARK}{os.getpid()}{path.suffix}")


def _umask_from_proc() -> int | None:
    """The umask as Linux reports it in /proc/self/status (None elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        return None
    return None


@functools.cache
def _umask_by_setting() -> int:
    """The umask, read by setting it and back (once: meanwhile other threads' new files
    get the stricter 0o077, never a wider mode)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def output_mode() -> int:
    """The mode a plain ``open()`` gives a new file: 0o666 less the umask."""
    # os.umask can only be read by changing it, which races with other threads; /proc not.
    mask = _umask_from_proc()
    return 0o666 & ~(_umask_by_setting() if mask is None else mask)


def set_output_mode(path: Path) -> None:
    """Give the file ``path`` the mode of ``output_mode`` (before renaming it into place),
    so that outputs do not differ in mode by which library wrote them."""
    if stat.S_ISREG(os.stat(path).st_mode):
        os.chmod(path, output_mode())


def space_needed(folder: Path, needed: int) -> str:
    """``it needs 12.3 MiB, 4.0 MiB are free`` for a write of ``needed`` bytes into
    ``folder``."""
    return f"it needs {_size(needed)}, {_size(shutil.disk_usage(folder).free)} are free"


def check_space(folder: Path, needed: int, what: Path) -> None:
    """A DiskFull error naming ``what`` and the space needed, before anything is written,
    when ``folder``'s file system has less than ``needed`` bytes (plus a margin) free."""
    if shutil.disk_usage(folder).free < needed + MARGIN:
        raise DiskFull(
            f"not enough space to write {what}: {space_needed(folder, needed)} on that disk; "
            "free some space and run again (what was written before is intact)"
        )


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; on success it replaces
    ``path``, on any failure it is removed and ``path`` keeps its previous content."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(final)
    try:
        yield tmp
        set_output_mode(tmp)
        os.replace(tmp, final)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno == 28:  # ENOSPC
            raise DiskFull(f"the disk filled up while writing {final}: {err.strerror}") from err
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """``path`` holds ``text`` (UTF-8, undecodable names escaped), written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="backslashreplace")


def write_with(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """``write(tmp)`` writes the file; it then replaces ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


class OutputSet:
    """Files that belong together, renamed into place together once all are written.

    ``with OutputSet(folder) as out: out.write_text("a.csv", ...); out.write_with(...)``;
    ``out.names`` lists what was written, for the command to print.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.pending: list[tuple[Path, Path]] = []

    @property
    def names(self) -> list[str]:
        return [str(final.relative_to(self.folder)) for _, final in self.pending]

    def path(self, name: str) -> Path:
        """A temporary path for the output ``name`` (relative to the folder)."""
        final = self.folder / name
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary(final)
        self.pending.append((tmp, final))
        return tmp

    def write_text(self, name: str, text: str) -> None:
        self.path(name).write_text(text, encoding="utf-8", errors="backslashreplace")

    def write_with(self, name: str, write: Callable[[Path], object]) -> None:
        write(self.path(name))

    def __enter__(self) -> OutputSet:
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(20, "the output folder is a file", str(self.folder))
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def _discard(self) -> None:
        for tmp, _ in self.pending:
            tmp.unlink(missing_ok=True)

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb) -> None:
        if kind is None:
            try:
                for tmp, _ in self.pending:  # all checked before the first rename
                    set_output_mode(tmp)
            except OSError:
                self._discard()
                raise
            for tmp, final in self.pending:
                os.replace(tmp, final)
            return
        self._discard()
        if isinstance(err, OSError) and err.errno == 28:
            raise DiskFull(f"the disk filled up while writing into {self.folder}") from err
