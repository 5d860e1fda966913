"""Where fassl keeps what it derives from data: the image stores (``store``) and unpacked
archives, in ``data.cache_dir``.

Left at its default the folder follows the XDG base directory rule:
``$XDG_CACHE_HOME/fassl`` when that variable holds an absolute path, else
``~/.cache/fassl``. Its folders carry a ``CACHEDIR.TAG``, so that backup tools, and
fassl's own folder walk, skip them where they lie inside a data folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fassl.config import DataConfig
from fassl.data.files.walk import CACHE_TAG, CACHE_TAG_SIGNATURE
from fassl.files import set_output_mode

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
    """The folder of extracted archives for ``data.cache_dir``, made
    with its CACHEDIR.TAG where it can be: archives are unpacked into it as soon as it is
    named, and a folder walk that meets it (a cache inside the data folder) skips it."""
    folder = cache_base(cache_dir) / "decoded"
    with contextlib.suppress(OSError):  # a read-only cache is still read
        folder.mkdir(parents=True, exist_ok=True)
        tag_cache(folder)
    return folder


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
