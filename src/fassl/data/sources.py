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
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

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


def _read_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR batch as a dict with str keys (the files are Python 2 pickles)."""
    with open(path, "rb") as f:
        obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a CIFAR batch (a dict)")
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


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def list_files(root: str | Path) -> list[str]:
    """Every non-hidden file below ``root`` (hidden folders skipped) as a sorted relative path.

    Plain strings rather than Path objects: listing and sorting 60k files stays well
    under a second, which matters because every cached load lists the folder again.
    """
    root = os.fspath(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        base = os.path.relpath(dirpath, root).replace(os.sep, "/")
        prefix = "" if base == "." else base + "/"
        found.extend(prefix + f for f in filenames if not _is_hidden(f))
    return sorted(found)


def _is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _class_of(path: str) -> str | None:
    """The class folder of a relative path, None for a file directly in the root."""
    head, sep, _ = path.partition("/")
    return head if sep else None


def _conversion(img: Image.Image) -> str | None:
    """Which conversion to RGB an image needs, as a name for the report (None: RGB)."""
    mode = img.mode
    if mode == "RGB":
        return None
    if mode in ("L", "1", "LA"):
        return "grayscale"
    if mode in ("RGBA", "RGBa", "RGBX"):
        return "RGBA"
    if mode in ("P", "PA"):
        return "palette"
    if mode.startswith("I") or mode == "F" or mode.startswith("RGB;16"):
        return "16-bit"
    if mode == "CMYK":
        return "CMYK"
    return mode


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float images to 8 bits by scaling, not clipping like convert()."""
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        arr = arr / max(float(arr.max()), 1.0)  # float images: [0, 1], or [0, max]
    else:
        arr = arr.astype(np.float64) / (65535.0 if arr.max() > 255 else 255.0)
    arr8 = np.clip(np.rint(arr * 255), 0, 255).astype(np.uint8)
    if arr8.ndim == 2:
        arr8 = np.repeat(arr8[:, :, None], 3, axis=2)
    return Image.fromarray(arr8[:, :, :3], "RGB")


def _to_rgb(img: Image.Image, kind: str | None) -> Image.Image:
    if kind is None:
        return img
    if kind == "16-bit":
        return _high_depth_to_rgb(img)
    if kind == "palette" and (img.mode == "PA" or "transparency" in img.info):
        img = img.convert("RGBA")  # a transparent palette entry must not become a colour
    return img.convert("RGB")


def _fit(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic, antialiased) and centre-crop a square."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


@dataclass
class _Decoded:
    """Outcome of decoding one file: the pixels, or why it was skipped."""

    pixels: np.ndarray | None
    conversion: str | None = None
    resized: bool = False
    error: str = ""


def _decode(path: Path, size: int) -> _Decoded:
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":  # let libjpeg decode big photos at 1/2..1/8 scale
                img.draft(None, (size, size))  # never below size on either side
            img.load()  # truncated or corrupt data fails here, not later
            kind = _conversion(img)
            rgb = _to_rgb(img, kind)
            resized = rgb.size != (size, size)
            if resized:
                rgb = _fit(rgb, size)
            pixels = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return _Decoded(None, error=f"{type(err).__name__}: {err}")
    return _Decoded(pixels, kind, resized)


def _decode_chunk(paths: Sequence[Path], size: int) -> list[_Decoded]:
    return [_decode(p, size) for p in paths]


def _decode_images(paths: Sequence[Path], size: int, workers: int = 0) -> list[_Decoded]:
    """Decode in chunks on a thread pool (PIL releases the GIL while decoding large images)."""
    if not paths:
        return []
    workers = workers or min(4, os.cpu_count() or 1)
    chunk = 256
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    if workers == 1 or len(chunks) == 1:
        return [d for c in chunks for d in _decode_chunk(c, size)]
    with ThreadPoolExecutor(workers) as pool:
        return [d for part in pool.map(_decode_chunk, chunks, [size] * len(chunks)) for d in part]


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _conversion_lines(decoded: Iterable[_Decoded], size: int) -> list[str]:
    kinds = Counter(d.conversion for d in decoded if d.pixels is not None and d.conversion)
    resized = sum(1 for d in decoded if d.pixels is not None and d.resized)
    lines = [f"converted {_plural(n, f'{k} image')} to RGB" for k, n in sorted(kinds.items())]
    if resized:
        lines.append(
            f"resized {_plural(resized, 'image')} to {size}x{size} (shorter side, then centre crop)"
        )
    return lines


def _skipped_line(skipped: list[tuple[str, str]], root: Path) -> list[str]:
    if not skipped:
        return []
    named = "; ".join(f"{p} ({why})" for p, why in skipped[:MAX_NAMED_FILES])
    more = len(skipped) - MAX_NAMED_FILES
    tail = f"; and {more:,} more" if more > 0 else ""
    return [f"skipped {_plural(len(skipped), 'unreadable image file')} in {root}: {named}{tail}"]


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
        raise ValueError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {root}")
    decoded = _decode_images([root / f for f in files], size)
    ok = [i for i, d in enumerate(decoded) if d.pixels is not None]
    skipped = [(files[i], d.error) for i, d in enumerate(decoded) if d.pixels is None]
    if not ok:
        raise ValueError(
            f"none of the {len(files):,} image files in {root} could be decoded "
            f"(first: {skipped[0][0]}: {skipped[0][1]})"
        )
    images = np.empty((len(ok), 3, size, size), dtype=np.uint8)
    for row, i in enumerate(ok):
        images[row] = decoded[i].pixels
    label_arr = np.asarray([labels[i] for i in ok], dtype=np.int64)
    lines = report + _conversion_lines(decoded, size) + _skipped_line(skipped, root)
    return ImageSet(images, label_arr, classes, lines)


def _split_images(files: list[str]) -> tuple[list[str], int]:
    images = [f for f in files if _is_image(f)]
    return images, len(files) - len(images)


def _ignored_line(n: int, root: Path) -> list[str]:
    if not n:
        return []
    return [f"ignored {_plural(n, 'non-image file')} in {root} (by extension)"]


def load_unlabeled_folder(root: str | Path, image_size: int) -> ImageSet:
    """Every image found recursively below ``root``; labels are -1, no classes."""
    root = _check_folder(Path(root))
    files, other = _split_images(list_files(root))
    report = _ignored_line(other, root)
    return _decode_to_set(root, files, [-1] * len(files), [], image_size, report)


def load_labeled_folder(
    root: str | Path, image_size: int, classes: Sequence[str] | None = None
) -> ImageSet:
    """One sub-folder per class (sorted names = label order), images anywhere below it.

    ``classes`` fixes the label order (a test folder must use its train folder's classes);
    a sub-folder not in it is an error, a class without a sub-folder simply has no images.
    """
    root = _check_folder(Path(root))
    files, other = _split_images(list_files(root))
    class_files = [f for f in files if _class_of(f) is not None]
    found = sorted({f.partition("/")[0] for f in class_files})
    loose = len(files) - len(class_files)
    if not found:
        hint = " (images lie directly in it: set data.labeled=false)" if loose else ""
        raise ValueError(f"labeled image folder {root} has no class sub-folders with images{hint}")
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"{root}: class folders {unknown} are not among {list(classes)}")
    index = {name: i for i, name in enumerate(classes)}
    report = _ignored_line(other, root)
    if loose:
        report.append(
            f"ignored {_plural(loose, 'image')} directly in {root}, outside class folders"
        )
    labels = [index[f.partition("/")[0]] for f in class_files]
    return _decode_to_set(root, class_files, labels, list(classes), image_size, report)


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
