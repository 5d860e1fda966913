"""Tiny-ImageNet (200 classes, 500 training images each, 64 px) in its published layout.

    wnids.txt                     one wnid a line: the classes
    words.txt                     wnid<TAB>names, comma-separated: the class names
    train/<wnid>/images/*.JPEG    the training images
    val/images/*.JPEG             the official validation images, used as the test set
    val/val_annotations.txt       file<TAB>wnid<TAB>bbox...: their labels

Labels follow the sorted wnids (as an ImageFolder of train/ would). data.root names the
folder or an archive of it. The long-tailed pre-training subset, the validation hold-out
and the few-shot set are drawn from train by the same protocol as CIFAR (protocol.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fassl.config import DataConfig
from fassl.data.datasets import LongTailData
from fassl.data.files.archives import folder_root
from fassl.data.files.decode import IMAGE_EXTENSIONS, ImageSet
from fassl.data.files.filelist import FileList, decode_list
from fassl.data.splits import protocol
from fassl.errors import DataError

DISPLAY_NAME = "Tiny-ImageNet"


def _required(root: Path, rel: str) -> Path:
    path = root / rel
    if not path.is_file():
        raise FileNotFoundError(
            f"Tiny-ImageNet: {path} not found (data.root must hold wnids.txt, words.txt, "
            "train/<wnid>/images/ and val/images/ with val/val_annotations.txt)"
        )
    return path


def read_wnids(root: Path) -> list[str]:
    path = _required(root, "wnids.txt")
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(wnids)) != len(wnids) or not wnids:
        raise DataError(f"{path}: expected distinct wnids, one a line")
    return sorted(wnids)


def class_names(root: Path, wnids: list[str]) -> list[str]:
    """The first name words.txt gives each wnid; the wnid is added where names collide."""
    path = _required(root, "words.txt")
    words = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        wnid, _, names = line.partition("\t")
        words[wnid.strip()] = names.split(",")[0].strip()
    first = [words.get(w) or w for w in wnids]
    return [n if first.count(n) == 1 else f"{n} ({w})" for n, w in zip(first, wnids, strict=True)]


def _images_in(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise FileNotFoundError(f"Tiny-ImageNet: folder not found: {folder}")
    return sorted(
        n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS
    )


def train_list(root: Path, wnids: list[str], classes: list[str]) -> FileList:
    files, labels = [], []
    for label, wnid in enumerate(wnids):
        names = _images_in(root / "train" / wnid / "images")
        files += [f"{wnid}/images/{n}" for n in names]
        labels += [label] * len(names)
    return FileList(root / "train", files, np.asarray(labels, np.int64), classes)


def val_list(root: Path, wnids: list[str], classes: list[str]) -> FileList:
    """The official validation images with labels from val_annotations.txt."""
    path = _required(root, "val/val_annotations.txt")
    index = {w: i for i, w in enumerate(wnids)}
    files, labels = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1].strip() not in index:
            raise DataError(
                f"{path}:{number}: expected 'file<TAB>wnid<TAB>...' with a wnid of "
                f"wnids.txt, got {line!r}"
            )
        rel = f"images/{parts[0].strip()}"
        if not (root / "val" / rel).is_file():
            raise FileNotFoundError(f"{path}:{number}: image {root / 'val' / rel} not found")
        files.append(rel)
        labels.append(index[parts[1].strip()])
    return FileList(root / "val", files, np.asarray(labels, np.int64), classes)


def load_train_test(cfg: DataConfig, root: Path) -> tuple[ImageSet, ImageSet]:
    """(train, official val as test), decoded at data.image_size through the cache."""
    if not root.is_dir():
        raise FileNotFoundError(f"Tiny-ImageNet: folder not found: {root}")
    wnids = read_wnids(root)
    classes = class_names(root, wnids)
    test_files = val_list(root, wnids, classes)
    size, where, budget = cfg.image_size, cfg.cache_dir, cfg.max_memory_gb
    train = decode_list(train_list(root, wnids, classes), size, where, "tiny-train", budget)
    test = decode_list(test_files, size, where, "tiny-val", budget)
    return train, test


def load(cfg: DataConfig, seed: int) -> LongTailData:
    """Tiny-ImageNet under the long-tailed protocol, its official val images as the test set."""
    train, test = load_train_test(cfg, folder_root(cfg))
    return protocol.draw(cfg, train, test, DISPLAY_NAME, seed)
