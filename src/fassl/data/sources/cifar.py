"""dataset=cifar10 / cifar100: the official python format, fetched on request.

The batches are Python 2 pickles; they are read by an unpickler that only rebuilds numpy
arrays, so a tampered file cannot run code. Without data.root the files live in (and a
download lands in) the cache folder, never the working directory.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fassl.config import DataConfig
from fassl.data.datasets import LongTailData
from fassl.data.files import cache
from fassl.data.files.decode import ImageSet
from fassl.data.splits import protocol
from fassl.errors import DataError, UnreadableBatch, printable

try:  # numpy >= 2 moved the array-reconstruction helpers
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

DISPLAY_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


@dataclass(frozen=True)
class _CifarSpec:
    folder: str
    archive: str
    md5: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str


CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR_SPECS = {
    "cifar10": _CifarSpec(
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
    ),
    "cifar100": _CifarSpec(
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        train_files=("train",),
        test_file="test",
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
    ),
}

# The only globals a CIFAR pickle needs: numpy's array reconstruction. Anything else
# (os.system, builtins.eval, ...) is refused, so a tampered file cannot run code.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes in protocol 2 pickles as _codecs.encode(str, "latin1").
    ("_codecs", "encode"): __import__("_codecs").encode,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: CIFAR files only hold numpy arrays"
            ) from None


def _read_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR batch as a dict with str keys (the files are Python 2 pickles)."""
    with open(path, "rb") as f:
        try:
            obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
            raise UnreadableBatch(
                f"{printable(path)} is not a readable CIFAR batch ({err}); replace it with "
                "the file from the official archive"
            ) from err
    if not isinstance(obj, dict):
        raise DataError(f"{printable(path)} does not hold a CIFAR batch (a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _as_str(name: str | bytes) -> str:
    return name.decode("utf-8") if isinstance(name, bytes) else str(name)


def _read_cifar_batches(paths: Sequence[Path], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for path in paths:
        batch = _read_pickle(path)
        data = np.asarray(batch["data"], dtype=np.uint8)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # an integrity check, as published
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` (a separate function so tests can replace it)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out)


def download_cifar(root: str | Path, name: str) -> Path:
    """Fetch and unpack a CIFAR archive into ``root``; verify its md5 before unpacking."""
    spec = CIFAR_SPECS[name]
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    archive = root / spec.archive
    if not archive.is_file() or _md5(archive) != spec.md5:
        partial = archive.with_name(archive.name + ".part")
        _fetch(CIFAR_URL + spec.archive, partial)
        got = _md5(partial)
        if got != spec.md5:
            partial.unlink(missing_ok=True)
            raise OSError(f"{spec.archive}: md5 {got} does not match the expected {spec.md5}")
        os.replace(partial, archive)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(root, filter="data")  # "data" refuses paths that leave root
    return root / spec.folder


def load_cifar(root: str | Path, name: str, download: bool = False) -> tuple[ImageSet, ImageSet]:
    """(train, test) of CIFAR-10 / CIFAR-100 (fine labels) from the official python format.

    ``root`` holds ``cifar-10-batches-py`` or ``cifar-100-python``; with ``download`` a
    missing folder is fetched from the official site, otherwise FileNotFoundError.
    """
    if name not in CIFAR_SPECS:
        raise ValueError(f"unknown CIFAR dataset {name!r}; expected one of {list(CIFAR_SPECS)}")
    spec = CIFAR_SPECS[name]
    folder = Path(root).expanduser().absolute() / spec.folder
    needed = [*spec.train_files, spec.test_file, spec.meta_file]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing and download:
        download_cifar(folder.parent, name)
        missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{name}: expected {folder / missing[0]} (the python version of the dataset, "
            f"{CIFAR_URL}{spec.archive}, extracted into {folder.parent}); "
            f"set data.download=true to fetch it, or point data.root at the folder that "
            f"holds {spec.folder}"
        )
    classes = [_as_str(n) for n in _read_pickle(folder / spec.meta_file)[spec.names_key]]
    train = _read_cifar_batches([folder / f for f in spec.train_files], spec.label_key)
    test = _read_cifar_batches([folder / spec.test_file], spec.label_key)
    return ImageSet(*train, classes), ImageSet(*test, classes)


def load_train_test(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """(train, test) of data.dataset; without data.root, from the cache folder."""
    return load_cifar(cfg.root or cache.cache_base(cfg.cache_dir), cfg.dataset, cfg.download)


def load(cfg: DataConfig, seed: int) -> LongTailData:
    """CIFAR-10 / CIFAR-100 under the long-tailed protocol."""
    train, test = load_train_test(cfg)
    return protocol.draw(cfg, train, test, DISPLAY_NAMES[cfg.dataset], seed)
