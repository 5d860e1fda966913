"""Image sources decoded to uint8 (N, 3, H, W) arrays: CIFAR python format, folders, digits.

Loaders never crash on one bad file: what they converted, resized or skipped is returned
as human-readable report lines, which end up in the run's notes.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fassl.data.decode import _conversion_lines, _decode_images, _plural
from fassl.data.decode import _decode as _decode  # re-exported: the streaming decoder's
from fassl.data.walk import FolderScan, scan_folder
from fassl.data.walk import list_files as list_files  # re-exported: the cache lists folders
from fassl.errors import DataError, printable

try:  # numpy >= 2 moved the array-reconstruction helpers
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_NAMED_FILES = 20  # skipped files named individually in a report line


@dataclass
class ImageSet:
    """Decoded images: uint8 (N, 3, H, W), int64 labels (N,) with -1 for unlabeled."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    report: list[str] = field(default_factory=list)
    # Each image's file relative to the folder it was loaded from, where there is one
    # (folder loaders; empty for CIFAR, digits and cached sets).
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------- CIFAR


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


class UnreadableBatch(DataError, pickle.UnpicklingError):
    """A CIFAR file that is not a plain pickle of numpy arrays (corrupt, or tampered with)."""


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


# --------------------------------------------------------------------------- folders


def _is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _class_of(path: str) -> str | None:
    """The class folder of a relative path, None for a file directly in the root."""
    head, sep, _ = path.partition("/")
    return head if sep else None


def _skipped_line(skipped: list[tuple[str, str]], root: Path) -> list[str]:
    if not skipped:
        return []
    named = "; ".join(f"{p} ({why})" for p, why in skipped[:MAX_NAMED_FILES])
    more = len(skipped) - MAX_NAMED_FILES
    tail = f"; and {more:,} more" if more > 0 else ""
    line = f"skipped {_plural(len(skipped), 'unreadable image file')} in {root}: {named}{tail}"
    return [printable(line)]


def _check_folder(root: Path) -> Path:
    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    return root


def _decode_to_set(
    root: Path,
    files: list[str],
    labels: list[int],
    classes: list[str],
    size: int,
    report: list[str],
) -> ImageSet:
    """Decode ``files`` (relative to root), drop unreadable ones, assemble the ImageSet."""
    if not files:
        raise DataError(
            f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {printable(root)}"
        )
    decoded = _decode_images([root / f for f in files], size)
    ok = [i for i, d in enumerate(decoded) if d.pixels is not None]
    skipped = [(files[i], d.error) for i, d in enumerate(decoded) if d.pixels is None]
    if not ok:
        raise DataError(
            printable(
                f"none of the {len(files):,} image files in {root} could be decoded "
                f"(first: {skipped[0][0]}: {skipped[0][1]})"
            )
        )
    images = np.empty((len(ok), 3, size, size), dtype=np.uint8)
    for row, i in enumerate(ok):
        images[row] = decoded[i].pixels
    label_arr = np.asarray([labels[i] for i in ok], dtype=np.int64)
    lines = report + _conversion_lines(decoded, size) + _skipped_line(skipped, root)
    return ImageSet(images, label_arr, classes, lines, [files[i] for i in ok])


def _split_images(files: list[str]) -> tuple[list[str], int]:
    images = [f for f in files if _is_image(f)]
    return images, len(files) - len(images)


def _ignored_line(n: int, root: Path) -> list[str]:
    if not n:
        return []
    return [f"ignored {_plural(n, 'non-image file')} in {printable(root)} (by extension)"]


def _scan(root: Path) -> tuple[list[str], list[str]]:
    """(image files, report lines) of a folder: links skipped, non-images ignored."""
    scan: FolderScan = scan_folder(root)
    files, other = _split_images(scan.files)
    return files, scan.report(root) + _ignored_line(other, root)


def load_unlabeled_folder(root: str | Path, image_size: int) -> ImageSet:
    """Every image found recursively below ``root``; labels are -1, no classes."""
    root = _check_folder(Path(root))
    files, report = _scan(root)
    return _decode_to_set(root, files, [-1] * len(files), [], image_size, report)


def _check_no_empty_class(data: ImageSet, root: Path) -> None:
    """A class folder whose every file failed to decode would train a class without images."""
    counts = np.bincount(data.labels, minlength=len(data.classes))
    empty = [data.classes[c] for c, n in enumerate(counts) if n == 0]
    if empty:
        raise DataError(
            printable(f"{root}: no readable image in the class folders {empty[:5]}")
            + " (every file there failed to decode); fix or remove those folders"
        )


def load_labeled_folder(
    root: str | Path, image_size: int, classes: Sequence[str] | None = None
) -> ImageSet:
    """One sub-folder per class (sorted names = label order), images anywhere below it.

    ``classes`` fixes the label order (a test folder must use its train folder's classes);
    a sub-folder not in it is an error, a class without a sub-folder simply has no images.
    """
    root = _check_folder(Path(root))
    files, report = _scan(root)
    class_files = [f for f in files if _class_of(f) is not None]
    found = sorted({f.partition("/")[0] for f in class_files})
    loose = len(files) - len(class_files)
    if not found:
        hint = " (images lie directly in it: set data.labeled=false)" if loose else ""
        raise DataError(
            printable(f"labeled image folder {root} has no class sub-folders with images{hint}")
        )
    fixed = classes is not None
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            printable(f"{root}: class folders {unknown} are not among the train classes")
            + f" {list(classes)[:10]}; the test folder must use the train folder's classes"
        )
    index = {name: i for i, name in enumerate(classes)}
    if loose:
        report.append(
            printable(
                f"ignored {_plural(loose, 'image')} directly in {root}, outside class folders"
            )
        )
    labels = [index[f.partition("/")[0]] for f in class_files]
    data = _decode_to_set(root, class_files, labels, list(classes), image_size, report)
    if not fixed:
        _check_no_empty_class(data, root)
    return data


# --------------------------------------------------------------------------- digits


def load_digits(image_size: int) -> ImageSet:
    """scikit-learn's embedded 8x8 handwritten digits (1,797 images), no download.

    Upscaled bilinearly to ``image_size``, 0..16 scaled to 0..255, replicated to 3 channels.
    """
    import torch
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32)).unsqueeze(1)  # (N, 1, 8, 8)
    big = torch.nn.functional.interpolate(
        small, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    gray = (big * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8)
    images = gray.expand(-1, 3, -1, -1).contiguous().numpy()
    classes = [str(int(c)) for c in bunch.target_names]
    return ImageSet(images, bunch.target.astype(np.int64), classes)
