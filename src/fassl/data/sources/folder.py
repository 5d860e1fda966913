"""dataset=folder: an image folder (or an archive of one), labeled by class sub-folders.

With ``data.labeled`` each sub-folder is a class (sorted names = label order) and images
may lie anywhere below it; a folder with train/ and test/ sub-folders uses them as such,
otherwise a seeded 20% of each class is the test set. Without labels every image found
is pre-training data. A folder is decoded once into the image store (files/store.py),
then read from it: into memory when small, memory-mapped otherwise; what was converted,
resized or skipped is returned as report lines, which end up in the run's notes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fassl.config import DataConfig
from fassl.data.datasets import LongTailData
from fassl.data.files import cache
from fassl.data.files.archives import folder_root
from fassl.data.files.decode import IMAGE_EXTENSIONS, ImageSet, decode_files, plural
from fassl.data.files.store import StoreImages, build_store, held_or_mapped, store_folder
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


@dataclass
class Listing:
    """A folder's image files (sorted) with their labels, before any decoding."""

    root: Path
    files: list[str]
    labels: list[int]
    classes: list[str]
    report: list[str]
    fixed_classes: bool = False  # a test folder read with its train folder's classes


def unlabeled_listing(root: str | Path) -> Listing:
    root = _check_folder(Path(root))
    files, report = _scan(root)
    return Listing(root, files, [-1] * len(files), [], report)


def load_unlabeled_folder(root: str | Path, image_size: int) -> ImageSet:
    """Every image found recursively below ``root``; labels are -1, no classes."""
    found = unlabeled_listing(root)
    return decode_files(found.root, found.files, found.labels, [], image_size, found.report)


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
    found = labeled_listing(root, classes)
    data = decode_files(
        found.root, found.files, found.labels, found.classes, image_size, found.report
    )
    if not found.fixed_classes:
        _check_no_empty_class(data, found.root)
    return data


def labeled_listing(root: str | Path, classes: Sequence[str] | None = None) -> Listing:
    """The files of a labeled folder (see ``load_labeled_folder``) and their labels."""
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
    return Listing(root, class_files, labels, list(classes), report, fixed)


def stored_images(
    found: Listing, cfg: DataConfig, progress: bool = True
) -> tuple[StoreImages, np.ndarray, list[str], list[str]]:
    """The listed files through the image store: (images, labels, files, report lines),
    the images and labels of the files that decoded."""
    if not found.files:
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
        skipped = "".join(f"; {line}" for line in found.report)  # links, caches, other files
        raise DataError(f"no image files ({kinds}) in {printable(found.root)}{skipped}")
    size = cfg.image_size
    folder = store_folder(cache.cache_base(cfg.cache_dir), found.root, size)
    built = build_store(folder, found.root, found.files, size, cfg.workers, progress)
    cache.tag_cache(folder.parent)  # a cache_dir inside the data folder is not data
    images = StoreImages.open(built, size, cfg.workers)
    rows, files = built.ok_rows()
    if not len(rows):
        path, why = next((i.files[r], w) for i in built.infos for r, w in i.failed.items())
        raise DataError(
            printable(
                f"none of the {len(found.files):,} image files in {found.root} could be "
                f"decoded (first: {path}: {why})"
            )
        )
    label_of = dict(zip(found.files, found.labels, strict=True))
    labels = np.asarray([label_of[f] for f in files], dtype=np.int64)
    verb = f"decoded {built.decoded:,} into" if built.decoded else "read from"
    line = f"{found.root}: {len(images):,} images, {verb} the image store {folder}"
    if built.removed:
        line += f" ({plural(built.removed, 'stale shard')} removed)"
    return images, labels, files, [line, *found.report, *built.report(found.root, size)]


def load_stored(cfg: DataConfig, root: Path, classes: list[str] | None = None) -> ImageSet:
    """A folder through the image store: in memory when small, memory-mapped otherwise."""
    found = labeled_listing(root, classes) if cfg.labeled else unlabeled_listing(root)
    images, labels, files, report = stored_images(found, cfg)
    data = ImageSet(held_or_mapped(images, cfg.max_memory_gb), labels, found.classes, report, files)
    if cfg.labeled and not found.fixed_classes:
        _check_no_empty_class(data, found.root)
    return data


def prepare(cfg: DataConfig) -> list[str]:
    """Build (or bring up to date) the image store of the folder data.root names, as a
    run of these settings reads it (train/ and test/ each when labeled): report lines."""
    root = folder_root(cfg)
    roots = [root / "train", root / "test"] if cfg.labeled and has_train_test(root) else [root]
    lines = []
    classes = None
    for where in roots:
        found = labeled_listing(where, classes) if cfg.labeled else unlabeled_listing(where)
        classes = classes or found.classes or None  # test/ takes train/'s classes
        images, _, _, report = stored_images(found, cfg)
        on_disk = sum(os.path.getsize(p) for p in images.shards)
        shards = plural(len(images.shards), "shard")
        lines += [*report, f"{where}: {shards}, {on_disk / 2**30:.2f} GiB on disk"]
    return lines


def has_train_test(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "test").is_dir()


def load(cfg: DataConfig, seed: int) -> LongTailData:
    """The folder named by data.root under the long-tailed protocol (unlabeled: all images)."""
    root = folder_root(cfg)
    name = root.name
    if not cfg.labeled:
        return protocol.unlabeled(cfg, load_stored(cfg, root), name)
    if has_train_test(root):
        train = load_stored(cfg, root / "train")
        test = load_stored(cfg, root / "test", train.classes)
    else:
        train, test = protocol.carve_test(load_stored(cfg, root), TEST_FRACTION, seed)
    return protocol.draw(cfg, train, test, name, seed)
