"""The images a tool runs on: every image of a folder or archive, or a built-in dataset.

A user's folder is read in full (every image found, not a long-tailed subset), each image
keeping its path so that per-image outputs can name it. Class sub-folders count as labels
only when ``data.labeled`` is on and every image lies in one; labels are used for
evaluation only (group enrichment, captions), never for the scores themselves.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fassl.config import DataConfig
from fassl.data.build import build_data
from fassl.data.datasets import LongTailData, channel_stats
from fassl.data.files.archives import folder_root
from fassl.data.files.decode import IMAGE_EXTENSIONS
from fassl.data.files.store import held_or_mapped
from fassl.data.files.walk import list_files
from fassl.data.sources.folder import stored_images, unlabeled_listing
from fassl.data.splits import longtail
from fassl.registry import NAMED_DATASETS

BUILTIN = NAMED_DATASETS  # the sources a tool's DATA may name
PRETRAIN = "pretrain"  # DATA keyword: the config's own long-tailed pre-training set


@dataclass
class Collection:
    """Images with their names, optional labels and the normalisation to feed them with."""

    name: str
    images: torch.Tensor  # uint8 (N, 3, H, W) (or a streamed split, read by slices)
    paths: list[str]  # one per image: file relative to the folder, or split/row
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    labels: torch.Tensor | None = None  # int64 (N,) class ids, None without labels
    classes: list[str] = field(default_factory=list)
    groups: dict[str, list[int]] = field(default_factory=dict)  # frequent/medium/rare ids
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def label_name(self, i: int) -> str:
        """Class name of image ``i`` ("" without labels)."""
        if self.labels is None:
            return ""
        return self.classes[int(self.labels[i])]

    def group_of(self, label: int) -> str:
        """Frequent / Medium / Rare group of a class id ("" when unknown)."""
        return next((g for g, ids in self.groups.items() if label in ids), "")

    def normalised_as(
        self, stats: tuple[tuple[float, ...], tuple[float, ...]] | None, source: str
    ) -> Collection:
        """This collection fed with another set's per-channel mean / std (an encoder's
        training images, ``LoadedEncoder.training_stats``); as it is for None."""
        if stats is None:
            return self
        mean, std = stats
        note = f"normalised with the training set's mean / std recorded in {source}"
        return dataclasses.replace(self, mean=mean, std=std, notes=[*self.notes, note])


def _class_parts(paths: list[str], root: Path) -> list[str] | None:
    """The class folder of each path, or None when some image lies outside one.

    With ``train/`` and ``test/`` sub-folders the class is the folder below them.
    """
    depth = 1 if (root / "train").is_dir() and (root / "test").is_dir() else 0
    parts = [p.split("/") for p in paths]
    if any(len(p) < depth + 2 for p in parts):
        return None
    return [p[depth] for p in parts]


def _folder_labels(
    paths: list[str], root: Path, cfg: DataConfig
) -> tuple[torch.Tensor | None, list[str], dict[str, list[int]], list[str]]:
    """(labels, classes, groups, notes) of a folder's images by their class folders."""
    if not cfg.labeled:
        return None, [], {}, ["data.labeled=false: class folders ignored"]
    names = _class_parts(paths, root)
    if names is None:
        return None, [], {}, [f"{root}: some images lie outside class folders: no labels"]
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([index[n] for n in names], dtype=torch.long)
    if len(classes) < 3:
        return labels, classes, {}, [f"{len(classes)} classes: too few for class groups"]
    counts = longtail.counts_per_class(labels.numpy(), len(classes))
    groups = longtail.group_classes(counts, cfg.groups, cfg.group_thresholds)
    return labels, classes, groups, [f"{len(classes)} classes from the folder names"]


def load_folder_collection(path: str | Path, cfg: DataConfig) -> Collection:
    """Every image below a folder (or in an archive of one) at data.image_size, read
    through the image store: decoded once, in memory when small, memory-mapped
    otherwise (the channel statistics of a large one from a seeded sample)."""
    root = folder_root(dataclasses.replace(cfg, root=str(path)))
    stored, _, paths, report = stored_images(unlabeled_listing(root), cfg)
    held = held_or_mapped(stored, cfg.max_memory_gb)
    images = torch.from_numpy(held) if isinstance(held, np.ndarray) else held
    labels, classes, groups, notes = _folder_labels(paths, root, cfg)
    mean, std = channel_stats(images)
    notes = [*report, *notes]
    coll = Collection(root.name, images, paths, mean, std, labels, classes, groups, notes)  # type: ignore[arg-type]
    return coll


def load_builtin_collection(name: str, cfg: DataConfig, seed: int) -> Collection:
    """The long-tailed pre-training set of a built-in dataset, as the probe normalises it."""
    cfg = dataclasses.replace(cfg, dataset=name)
    return collection_from_data(build_data(cfg, seed), cfg)


def load_collection(data: str, cfg: DataConfig, seed: int = 0) -> Collection:
    """DATA of a tool's command line: a folder, an archive, a built-in dataset name, or
    ``pretrain``: the long-tailed pre-training set the config draws (``data.*`` as given,
    e.g. the run's own config.yaml)."""
    if data == PRETRAIN:
        return collection_from_data(build_data(cfg, seed), cfg)
    if Path(data).expanduser().exists():
        return load_folder_collection(Path(data).expanduser(), cfg)
    if data in BUILTIN:
        return load_builtin_collection(data, cfg, seed)
    raise FileNotFoundError(
        f"{data} is neither an existing folder or archive, nor a built-in dataset "
        f"({', '.join(BUILTIN)}), nor '{PRETRAIN}' (the config's pre-training set)"
    )


def _folder_paths(cfg: DataConfig, n: int) -> list[str] | None:
    """The files of an unlabeled folder run, when its ``n`` pre-training images are
    exactly its image files (none skipped as unreadable): loading keeps their order."""
    if cfg.dataset != "folder" or cfg.labeled or not cfg.root:
        return None
    root = folder_root(cfg)
    files = [f for f in list_files(root) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return files if len(files) == n else None


def collection_from_data(data: LongTailData, cfg: DataConfig) -> Collection:
    """A run's pre-training images as a collection (paths where they can be known)."""
    split = data.pretrain
    paths = _folder_paths(cfg, len(split)) or [f"pretrain/{i:06d}" for i in range(len(split))]
    labels = split.labels.clone() if data.labeled else None
    return Collection(
        data.name,
        split.images,
        paths,
        data.mean,
        data.std,
        labels,
        list(data.classes),
        dict(data.groups),
        list(data.notes),
    )
