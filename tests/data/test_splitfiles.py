"""dataset=splitfile: SDCLR's list format, its errors, and the streaming loader."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fassl.config import DataConfig, SplitFilesConfig
from fassl.data import build_data
from fassl.data.files.store import StoreImages
from fassl.data.sources.splitfile import class_names, read_list
from fassl.errors import DataError
from tests.data_fixtures import REPO, save_image

WNIDS = ["n001", "n002", "n003"]


def _image_root(root: Path, per_class: dict[str, int], seed: int = 0) -> dict[str, list[str]]:
    """train/<wnid>/<wnid>_<i>.JPEG random images of odd sizes; relative paths by wnid."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {}
    for wnid, n in per_class.items():
        out[wnid] = []
        for i in range(n):
            h, w = rng.integers(12, 30, 2)
            rel = f"train/{wnid}/{wnid}_{i}.JPEG"
            save_image(root / rel, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            out[wnid].append(rel)
    return out


def _write_list(path: Path, entries: list[tuple[str, int]]) -> str:
    path.write_text("".join(f"{rel} {label}\n" for rel, label in entries))
    return path.name


@pytest.fixture()
def listed(tmp_path: Path) -> DataConfig:
    """Lists over 3 classes: pretrain 6/3/1 (long-tailed), pool 4 a class, test 2 a class."""
    files = _image_root(tmp_path / "imagenet", {w: 8 for w in WNIDS})
    lists = tmp_path / "lists"
    lists.mkdir()
    take = {
        "pretrain": (6, 3, 1),
        "pool": (4, 4, 4),
        "test": (2, 2, 2),
    }
    names = {}
    for split, counts in take.items():
        start = {"pretrain": 0, "pool": 0, "test": 6}[split]
        entries = [
            (rel, c) for c, w in enumerate(WNIDS) for rel in files[w][start : start + counts[c]]
        ]
        names[split] = _write_list(lists / f"{split}.txt", entries)
    split_files = SplitFilesConfig(dir=str(lists), **names)
    return DataConfig(
        dataset="splitfile",
        root=str(tmp_path / "imagenet"),
        image_size=16,
        split_files=split_files,
        val_per_class=1,
        few_shot_fraction=0.5,
        cache_dir=str(tmp_path / "cache"),
    )


def test_lists_become_the_splits(listed: DataConfig) -> None:
    data = build_data(listed, seed=0)
    assert data.classes == WNIDS and data.name == "imagenet"
    assert data.class_counts == [6, 3, 1] and len(data.pretrain) == 10
    assert data.pretrain.images.shape == (10, 3, 16, 16)
    assert torch.bincount(data.val.labels).tolist() == [1, 1, 1]  # held out of the pool
    assert torch.bincount(data.pool.labels).tolist() == [3, 3, 3]
    assert torch.bincount(data.few_shot.labels).tolist() == [2, 2, 2]  # round(0.5 * 3)
    assert torch.bincount(data.test.labels).tolist() == [2, 2, 2]
    assert data.groups == {"frequent": [0], "medium": [1], "rare": [2]}
    assert any("pretrain.txt" in line for line in data.notes)
    counts = build_data(replace(listed, groups="counts", group_thresholds=[5, 2]))
    assert counts.groups == {"frequent": [0], "medium": [1], "rare": [2]}


def test_explicit_val_and_few_shot_lists(listed: DataConfig, tmp_path: Path) -> None:
    lists = Path(listed.split_files.dir)
    rel = "train/n002/n002_7.JPEG"
    (lists / "val.txt").write_text(f"{rel} 1\n\n")
    (lists / "few.txt").write_text(f"{rel} 1\n")
    cfg = replace(
        listed, split_files=replace(listed.split_files, val="val.txt", few_shot="few.txt")
    )
    data = build_data(cfg)
    assert data.val.labels.tolist() == [1] and data.few_shot.labels.tolist() == [1]
    assert len(data.pool) == 12


def test_numeric_class_names_when_folders_are_not_one_to_one(listed: DataConfig) -> None:
    lists = Path(listed.split_files.dir)
    text = (lists / "test.txt").read_text().replace("n003_6.JPEG 2", "n003_6.JPEG 1")
    (lists / "test.txt").write_text(text)
    assert build_data(listed).classes == ["0", "1", "2"]


def test_errors_name_the_list_and_line(listed: DataConfig) -> None:
    lists = Path(listed.split_files.dir)
    good = (lists / "test.txt").read_text().splitlines()
    (lists / "test.txt").write_text("\n".join([good[0], "train/n001/n001_6.JPEG cat", *good[2:]]))
    with pytest.raises(ValueError, match=r"test.txt:2: expected 'relative/path label'"):
        build_data(listed)
    (lists / "test.txt").write_text("\n".join([*good[:3], "train/n009/missing.JPEG 0"]))
    with pytest.raises(FileNotFoundError, match=r"test.txt:4: image .*n009/missing.JPEG not found"):
        build_data(listed)
    with pytest.raises(FileNotFoundError, match=r"data.split_files.val: list file not found"):
        build_data(replace(listed, split_files=replace(listed.split_files, val="nope.txt")))
    with pytest.raises(ValueError, match=r"data.split_files.test must name a list file"):
        build_data(replace(listed, split_files=replace(listed.split_files, test="")))


def test_a_mapped_store_gives_the_in_memory_pixels(listed: DataConfig) -> None:
    memory = build_data(listed)
    streamed = build_data(replace(listed, max_memory_gb=1e-9, workers=2))
    images = streamed.pretrain.images
    assert isinstance(images, StoreImages) and isinstance(memory.pretrain.images, torch.Tensor)
    assert images.shape == (10, 3, 16, 16) and images.dtype == torch.uint8 and len(images) == 10
    idx = torch.tensor([9, 0, 4, 4, 7, 1, 2, 3, 5, 6, 8])
    assert torch.equal(images[idx], memory.pretrain.images[idx])
    assert torch.equal(images[3], memory.pretrain.images[3])
    assert torch.equal(images[2:5], memory.pretrain.images[2:5])
    batches = list(images.batches([idx[:4], idx[4:], torch.tensor([], dtype=torch.long)]))
    assert torch.equal(torch.cat(batches), memory.pretrain.images[idx])
    assert torch.equal(images.take(idx[:3])[torch.tensor([2, 0])], memory.pretrain.images[[4, 9]])
    assert streamed.mean == pytest.approx(memory.mean) and streamed.std == pytest.approx(memory.std)
    assert torch.equal(streamed.test.images[torch.arange(6)], memory.test.images)
    assert any("memory-mapped from the image store" in line for line in streamed.notes)
    copy = pickle.loads(pickle.dumps(images))
    assert torch.equal(copy[idx], memory.pretrain.images[idx])
    images.close()
    copy.close()


def test_a_listed_image_that_does_not_decode_is_an_error(listed: DataConfig) -> None:
    lists = Path(listed.split_files.dir)
    first = Path(listed.root) / read_list(lists / listed.split_files.pretrain).paths[0]
    first.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"every listed image must decode; 1 did not: "):
        build_data(listed)


def test_real_imagenet_100_lists_parse() -> None:
    folder = REPO.parent / "shared" / "data" / "sdclr-splits" / "imagenet-100"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    names = {
        "imageNet_100_LT_train.txt": 12_205,
        "imageNet_100_BL_train.txt": 12_200,
        "imageNet_100_sub_balance_train_0.01.txt": 1_200,
        "ImageNet_100_val.txt": 2_000,
        "ImageNet_100_test.txt": 5_000,
    }
    lists = [read_list(folder / name) for name in names]
    assert [len(x.paths) for x in lists] == list(names.values())
    classes = class_names(lists, 100)
    assert len(set(classes)) == 100 and all(c.startswith("n") and len(c) == 9 for c in classes)
    assert classes[26] == "n01558993"  # the test list's first line: val/n01558993/... 26
