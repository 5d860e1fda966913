"""dataset=folder: an image folder (or an archive of one), labeled by class sub-folders.

With ``data.labeled`` each sub-folder is a class (sorted names = label order) and images
may lie anywhere below it; a folder with train/ and test/ sub-folders uses them as such,
otherwise a seeded 20% of each class is the test set. Without labels every image found
is pre-training data. Decoded folders are cached (cache.py); what was converted, resized
or skipped is returned as report lines, which end up in the run's notes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fassl.config import DataConfig
from fassl.data.datasets import LongTailData
from fassl.data.files import cache
from fassl.data.files.archives import folder_root
from fassl.data.files.decode import IMAGE_EXTENSIONS, ImageSet, decode_files, plural
from fassl.data.files.walk import FolderScan, scan_folder
from fassl.data.splits import protocol
from fassl.errors import DataError, printable

TEST_FRACTION = 0.2  # a folder without train/ and test/ keeps 20% per class as test


def _is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _class_of(path: str) -> str | None:
    """The class folder of a relative path, None for a file directly in the root."""
    head, sep, _ = path.partition("/")
    return head if sep else None


def _check_folder(root: Path) -> Path:
    root = Path(root).expanduser().absolute()
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    return root


def _split_images(files: list[str]) -> tuple[list[str], int]:
    images = [f for f in files if _is_image(f)]
    return images, len(files) - len(images)


def _ignored_line(n: int, root: Path) -> list[str]:
    if not n:
        return []
    return [f"ignored {plural(n, 'non-image file')} in {printable(root)} (by extension)"]


def _scan(root: Path) -> tuple[list[str], list[str]]:
    """(image files, report lines) of a folder: links skipped, non-images ignored."""
    scan: FolderScan = scan_folder(root)
    files, other = _split_images(scan.files)
    return files, scan.report(root) + _ignored_line(other, root)


def load_unlabeled_folder(root: str | Path, image_size: int) -> ImageSet:
    """Every image found recursively below ``root``; labels are -1, no classes."""
    root = _check_folder(Path(root))
    files, report = _scan(root)
    return decode_files(root, files, [-1] * len(files), [], image_size, report)


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
            printable(f"ignored {plural(loose, 'image')} directly in {root}, outside class folders")
        )
    labels = [index[f.partition("/")[0]] for f in class_files]
    data = decode_files(root, class_files, labels, list(classes), image_size, report)
    if not fixed:
        _check_no_empty_class(data, root)
    return data


def load_cached(cfg: DataConfig, root: Path, classes: list[str] | None = None) -> ImageSet:
    """A folder through the decode cache; a report line says whether the cache was used."""
    size = cfg.image_size

    def decode() -> ImageSet:
        if cfg.labeled:
            return load_labeled_folder(root, size, classes)
        return load_unlabeled_folder(root, size)

    kind = "folder-labeled" if cfg.labeled else "folder-unlabeled"
    data, hit = cache.cached(cfg.cache_dir, kind, root, size, decode, classes or [])
    verb = "read from" if hit else "decoded and saved to"
    line = f"{root}: {len(data):,} images {verb} the cache in {cache.cache_root(cfg.cache_dir)}"
    data.report = [line, *data.report]
    return data


def has_train_test(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "test").is_dir()


def load(cfg: DataConfig, seed: int) -> LongTailData:
    """The folder named by data.root under the long-tailed protocol (unlabeled: all images)."""
    root = folder_root(cfg)
    name = root.name
    if not cfg.labeled:
        return protocol.unlabeled(cfg, load_cached(cfg, root), name)
    if has_train_test(root):
        train = load_cached(cfg, root / "train")
        test = load_cached(cfg, root / "test", train.classes)
    else:
        train, test = protocol.carve_test(load_cached(cfg, root), TEST_FRACTION, seed)
    return protocol.draw(cfg, train, test, name, seed)
