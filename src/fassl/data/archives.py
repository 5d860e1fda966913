"""Archives of image folders (.tar, .tar.gz, .tgz, .zip), unpacked once into the cache,
and data.root as a folder whichever of the two it names."""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from pathlib import Path

from fassl.config import DataConfig
from fassl.data import cache
from fassl.errors import DataError, printable
from fassl.processes import pid_alive

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _unpack(archive: Path, dest: Path) -> None:
    """Unpack refusing links and paths that would leave ``dest``."""
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                target = (dest / name).resolve()
                if not target.is_relative_to(dest.resolve()):
                    raise DataError(
                        printable(f"{archive}: member {name!r} leaves the extraction folder")
                        + "; refusing to unpack it"
                    )
            zf.extractall(dest)
        return
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")  # no links or paths outside dest


def _remove_stale_partials(target: Path) -> None:
    """Folders of extractions whose process died before renaming them into place."""
    for tmp in target.parent.glob(f"{target.name}.partial-*"):
        pid = tmp.name.rpartition("-")[2]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def extract_archive(archive: Path, cache_dir: Path) -> Path:
    """Unpack an archive of an image folder once into the cache; return the folder.

    The archive is unpacked into a temporary folder of this process, renamed when
    complete, so an interrupted extraction is redone rather than half used, and
    several runs started at once on the same archive each finish (the first rename
    wins; the others drop their copy). An archive holding a single top-level folder
    yields that folder.
    """
    stat = archive.stat()
    target = cache_dir / "extracted" / f"{archive.name}-{stat.st_size}-{int(stat.st_mtime)}"
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(target)
        tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _unpack(archive, tmp)
        except (tarfile.TarError, zipfile.BadZipFile, OSError) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(
                printable(f"cannot unpack {archive}: {err}")
                + " (archives with links or paths leaving the archive are refused)"
            ) from err
        except DataError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    entries = [p for p in target.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else target


def folder_root(cfg: DataConfig) -> Path:
    """data.root as a folder: an archive is unpacked once into the cache."""
    if not cfg.root:
        raise DataError(f"data.root must name the image folder for dataset={cfg.dataset}")
    root = Path(cfg.root).expanduser().absolute()
    if is_archive(root):
        root = extract_archive(root, cache.cache_root(cfg.cache_dir))
    return root
