"""Decoded image sets cached on disk, keyed by the exact files they were decoded from.

Decoding tens of thousands of small JPEGs costs seconds to minutes; reading the decoded
uint8 array back costs a fraction of a second. The key hashes every file's relative path,
size and mtime, so adding, removing or touching a file decodes the folder again.

The cache lives in ``data.cache_dir``; left at its default it follows the XDG base
directory rule: ``$XDG_CACHE_HOME/fassl`` when that variable holds an absolute path, else
``~/.cache/fassl``. The folder of decoded sets carries a ``CACHEDIR.TAG``, so that
backup tools, and fassl's own folder walk, skip it where it lies inside a data folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fassl.config import DataConfig
from fassl.data.files.decode import ImageSet
from fassl.data.files.walk import CACHE_TAG, CACHE_TAG_SIGNATURE, list_files
from fassl.files import set_output_mode

# Bump when the decoded pixels or the stored layout change (resize method, conversions).
# 2: EXIF orientation applied, 16-bit scaled by bit depth, transparency onto black.
FORMAT_VERSION = 2
DEFAULT_CACHE_DIR = DataConfig.cache_dir  # "~/.cache/fassl"
# https://bford.info/cachedir/: the signature, then comments
CACHE_TAG_TEXT = CACHE_TAG_SIGNATURE + (
    b"\n# This file is a cache directory tag created by fassl (its decoded images).\n"
    b"# For information about cache directory tags, see https://bford.info/cachedir/\n"
)


def cache_base(cache_dir: str | Path) -> Path:
    """The cache folder of ``data.cache_dir``: as given, except that the default follows
    ``XDG_CACHE_HOME`` (``$XDG_CACHE_HOME/fassl``). The XDG rule ignores a relative value."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if str(cache_dir) == DEFAULT_CACHE_DIR and os.path.isabs(xdg):
        return Path(xdg) / "fassl"
    return Path(cache_dir).expanduser().absolute()


def cache_root(cache_dir: str | Path) -> Path:
    """The folder of decoded sets (and extracted archives) for ``data.cache_dir``, made
    with its CACHEDIR.TAG where it can be: archives are unpacked into it as soon as it is
    named, and a folder walk that meets it (a cache inside the data folder) skips it."""
    folder = cache_base(cache_dir) / "decoded"
    with contextlib.suppress(OSError):  # a read-only cache is still read
        folder.mkdir(parents=True, exist_ok=True)
        tag_cache(folder)
    return folder


def fingerprint(kind: str, root: str | Path, image_size: int, extra: Sequence[str] = ()) -> str:
    """Hash of what a decoded set depends on: source kind, folder, its files, size, version.

    ``extra`` carries other inputs of the decode (e.g. a fixed class order).
    """
    root = Path(root).expanduser().absolute()
    files = []
    for rel in list_files(root):
        st = os.stat(os.path.join(root, rel))
        files.append([rel, st.st_size, st.st_mtime_ns])
    payload = {
        "kind": kind,
        "root": str(root),
        "files": files,
        "image_size": image_size,
        "extra": list(extra),
        "version": FORMAT_VERSION,
    }
    blob = json.dumps(payload, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write through a temp file in the same folder, then rename: readers never see a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        set_output_mode(Path(tmp))  # mkstemp creates files 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tag_cache(folder: Path) -> None:
    """``folder``'s CACHEDIR.TAG (https://bford.info/cachedir/), written once: backup
    tools and ``walk.scan_folder`` skip the folder."""
    tag = folder / CACHE_TAG
    if not tag.is_file():
        _write_atomic(tag, lambda f: f.write(CACHE_TAG_TEXT))


def _paths(folder: Path, key: str) -> tuple[Path, Path, Path]:
    return folder / f"{key}.images.npy", folder / f"{key}.labels.npy", folder / f"{key}.json"


def save(cache_dir: str | Path, key: str, data: ImageSet) -> None:
    """Store the arrays first and the json last: the json marks a complete entry."""
    folder = cache_root(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels, meta = _paths(folder, key)
    _write_atomic(images, lambda f: np.save(f, np.ascontiguousarray(data.images)))
    _write_atomic(labels, lambda f: np.save(f, data.labels.astype(np.int64)))
    info = {"classes": data.classes, "report": data.report, "version": FORMAT_VERSION}
    _write_atomic(meta, lambda f: f.write(json.dumps(info, indent=1).encode()))


def load(cache_dir: str | Path, key: str) -> ImageSet | None:
    """The cached set for ``key``, or None when absent or unreadable."""
    images, labels, meta = _paths(cache_root(cache_dir), key)
    if not meta.is_file():
        return None
    try:
        info = json.loads(meta.read_text())
        return ImageSet(np.load(images), np.load(labels), info["classes"], info["report"])
    except (OSError, ValueError, KeyError):
        return None


def cached(
    cache_dir: str | Path,
    kind: str,
    root: str | Path,
    image_size: int,
    decode: Callable[[], ImageSet],
    extra: Sequence[str] = (),
) -> tuple[ImageSet, bool]:
    """(the decoded set, whether it came from the cache); decode and store it on a miss."""
    key = fingerprint(kind, root, image_size, extra)
    hit = load(cache_dir, key)
    if hit is not None:
        return hit, True
    data = decode()
    save(cache_dir, key, data)
    return data, False
