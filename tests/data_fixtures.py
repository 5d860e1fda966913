"""Helpers for the data tests: tiny CIFAR folders in the official format, small image files,
and the real CIFAR-10 JPEG copy extracted into the cache directory (never into the repo)."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CIFAR10_JPEG_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CACHE_DIR = Path("~/.cache/fassl").expanduser()


def cifar10_jpeg_root() -> Path:
    """The extracted CIFAR-10 JPEG copy (train/ and test/), extracting it once if needed."""
    target = CACHE_DIR / "cifar10-jpeg"
    if (target / "train").is_dir() and (target / "test").is_dir():
        return target
    if not CIFAR10_JPEG_ARCHIVE.is_file():
        pytest.skip(f"CIFAR-10 JPEG archive not found at {CIFAR10_JPEG_ARCHIVE}")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # Extract next to the target and rename, so an interrupted run leaves no half folder.
    tmp = Path(tempfile.mkdtemp(dir=CACHE_DIR, prefix=".cifar10-jpeg."))
    try:
        with tarfile.open(CIFAR10_JPEG_ARCHIVE, "r:gz") as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp / "cifar10-jpeg", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def random_images(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes bytes as Python 2 ``str`` opcodes (BINSTRING), as in the official CIFAR files."""

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]
    dispatch[bytes] = save_bytes


def _dump(path: Path, obj: dict[str, object], py2: bool) -> None:
    """A protocol-2 pickle. ``py2`` mimics the official files: keys, names and array data
    as Python 2 strings and numpy 1's module path; otherwise Python 3 str keys."""
    if not py2:
        path.write_bytes(pickle.dumps(obj, protocol=2))
        return
    as_py2 = {
        k.encode(): [v.encode() for v in val] if k.endswith("names") else val
        for k, val in obj.items()
    }
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(as_py2)
    path.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6, py2: bool = True) -> Path:
    """``root/cifar-10-batches-py`` in the official layout: 5 data batches, test, meta.

    Image i of the train set has label i % 10; test image i has label i.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images = random_images(5 * per_batch + n_test)
    for b in range(5):
        rows = images[b * per_batch : (b + 1) * per_batch].reshape(per_batch, -1)
        labels = [(b * per_batch + i) % 10 for i in range(per_batch)]
        _dump(folder / f"data_batch_{b + 1}", {"data": rows, "labels": labels}, py2)
    test = {"data": images[5 * per_batch :].reshape(n_test, -1), "labels": list(range(n_test))}
    _dump(folder / "test_batch", test, py2)
    _dump(folder / "batches.meta", {"label_names": [f"class{c}" for c in range(10)]}, py2)
    return folder


def write_cifar100(root: Path, n_train: int = 8, n_test: int = 4) -> Path:
    """``root/cifar-100-python`` with train, test and meta (fine and coarse labels)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    images = random_images(n_train + n_test, seed=1)
    for name, rows in (("train", images[:n_train]), ("test", images[n_train:])):
        fine = [(7 * i) % 100 for i in range(len(rows))]
        batch = {
            "data": rows.reshape(len(rows), -1),
            "fine_labels": fine,
            "coarse_labels": [f // 5 for f in fine],
        }
        _dump(folder / name, batch, py2=True)
    meta = {
        "fine_label_names": [f"fine{c}" for c in range(100)],
        "coarse_label_names": [f"coarse{c}" for c in range(20)],
    }
    _dump(folder / "meta", meta, py2=True)
    return folder


def save_image(path: Path, image: Image.Image | np.ndarray, **kwargs: object) -> Path:
    """Write an image (or an (H, W[, C]) array) with PIL, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image.save(path, **kwargs)
    return path


def rgb(value: int | tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> np.ndarray:
    """A constant RGB image of (height, width) = size."""
    return np.broadcast_to(np.asarray(value, dtype=np.uint8), (*size, 3)).copy()


def write_class_folder(root: Path, counts: dict[str, int], size: int = 32, seed: int = 0) -> Path:
    """A labeled folder of random RGB PNGs: ``counts`` images per class sub-folder."""
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        for i in range(n):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            save_image(root / name / f"{i:04d}.png", pixels)
    return root


def write_tinyimagenet(
    root: Path, wnids: list[str], per_class: int, val_per_class: int, seed: int = 0
) -> Path:
    """Tiny-ImageNet's published layout with random 64 px JPEGs: wnids.txt, words.txt,
    train/<wnid>/images/<wnid>_<i>.JPEG (+ a boxes file), val/images/val_<j>.JPEG and
    val/val_annotations.txt. Validation image j belongs to wnids[j % len(wnids)]."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in reversed(wnids)))
    words = "".join(f"{w}\tthing {w[-1]}, other name\n" for w in wnids) + "n999\tunused\n"
    (root / "words.txt").write_text(words)
    for w in wnids:
        for i in range(per_class):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            save_image(root / "train" / w / "images" / f"{w}_{i}.JPEG", pixels, format="JPEG")
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
    lines = []
    for j in range(val_per_class * len(wnids)):
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        save_image(root / "val" / "images" / f"val_{j}.JPEG", pixels, format="JPEG")
        lines.append(f"val_{j}.JPEG\t{wnids[j % len(wnids)]}\t0\t0\t63\t63\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    return root
