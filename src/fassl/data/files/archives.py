"""Archives of image folders (.tar, .tar.gz, .tgz, .zip), unpacked once into the cache,
and data.root as a folder whichever of the two it names.

The cache entry of an archive is keyed on its content (SHA-256 of its bytes, computed once
and remembered per path, size, mtime and inode), so two different archives of the same
name, size and time never share an extraction. Before anything is written, the members'
total size and the compression ratio are bounded (a small archive that would fill the
disk is refused) and the disk is checked for room.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

from fassl.config import DataConfig
from fassl.data.files import cache
from fassl.errors import DataError, printable
from fassl.files import check_space, write_text
from fassl.processes import pid_alive

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
MAX_RATIO = 200  # unpacked / packed bytes; images barely compress (CIFAR's JPEGs: about 1)
MAX_UNPACKED = 64 << 30  # bytes one archive may unpack to
HASH_INDEX = "content-hashes.json"  # "path|size|mtime_ns|inode" -> sha256, in extracted/


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


def content_hash(archive: Path, folder: Path) -> str:
    """SHA-256 of the archive's bytes, remembered in ``folder/HASH_INDEX`` under its path,
    size, mtime (ns) and inode so that it is computed once per version of the file."""
    st = archive.stat()
    key = f"{archive.absolute()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    index_path = folder / HASH_INDEX
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    if not isinstance(index, dict):
        index = {}
    if isinstance(index.get(key), str):
        return index[key]
    digest = hashlib.sha256()
    with archive.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    index[key] = digest.hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    write_text(index_path, json.dumps(index, indent=1))
    return index[key]


def unpacked_size(archive: Path) -> int:
    """The total size of the archive's members once unpacked (read from its listing)."""
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            return sum(info.file_size for info in zf.infolist())
    with tarfile.open(archive) as tar:
        return sum(member.size for member in tar.getmembers() if member.isfile())


def check_unpacked_size(archive: Path, folder: Path) -> None:
    """Refuse an archive that would unpack to more than MAX_UNPACKED bytes or MAX_RATIO
    times its own size, or to more than the disk holds: before anything is written."""
    try:
        total = unpacked_size(archive)
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataError(printable(f"cannot read the listing of {archive}: {err}")) from err
    packed = max(1, archive.stat().st_size)
    if total > MAX_UNPACKED or total > MAX_RATIO * packed:
        raise DataError(
            printable(
                f"{archive} would unpack to {total / 2**30:.2f} GiB, {total / packed:.0f} times "
                f"its own size (limits: {MAX_UNPACKED / 2**30:.0f} GiB, {MAX_RATIO}x): refusing "
                "to unpack it; unpack it yourself and point data.root at the folder"
            )
        )
    folder.mkdir(parents=True, exist_ok=True)
    check_space(folder, total, archive)


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
    yields that folder. The folder's name carries the archive's content hash.
    """
    folder = cache_dir / "extracted"
    target = folder / f"{archive.name}-{content_hash(archive, folder)[:24]}"
    if not target.is_dir():
        check_unpacked_size(archive, folder)
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
