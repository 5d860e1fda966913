"""SDCLR's published CIFAR splits (data.sdclr_splits): index files, labels, JPEG mapping."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fassl.config import DataConfig
from fassl.data import build_data
from fassl.data.files.decode import ImageSet
from fassl.data.splits import sdclr
from tests.data_fixtures import REPO, save_image, write_cifar10

SPLITS_DIR = REPO.parent / "shared" / "data" / "sdclr-splits"
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def index_images(n: int) -> np.ndarray:
    """(n, 3, 1, 2) images whose pixels spell their own index: i = 256 * px0 + px1."""
    images = np.zeros((n, 3, 1, 2), dtype=np.uint8)
    images[:, :, 0, 0] = (np.arange(n) // 256)[:, None]
    images[:, :, 0, 1] = (np.arange(n) % 256)[:, None]
    return images


def spelled(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() * 256 + images[:, 0, 0, 1].long()).tolist()


@pytest.fixture(scope="module")
def real_cifar10_dir() -> Path:
    folder = SPLITS_DIR / "cifar10"
    if not (folder / "split1_D_i.npy").is_file():
        pytest.skip(f"SDCLR's split files not found in {folder}")
    return folder


def test_real_split1_of_cifar10(real_cifar10_dir: Path) -> None:
    labels = np.load(real_cifar10_dir / "cifar10_train_labels.npy")
    assert labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    n = len(labels)
    train = ImageSet(index_images(n), labels.astype(np.int64), CIFAR10)
    test = ImageSet(index_images(4), np.arange(4, dtype=np.int64), CIFAR10)
    cfg = DataConfig(dataset="cifar10", sdclr_splits=str(real_cifar10_dir), split=1)
    data = sdclr.assemble_sdclr(cfg, "cifar10", train, test, "CIFAR-10")
    assert len(data.pretrain) == 11_165 and len(data.pool) == 45_000 and len(data.val) == 5_000
    assert sorted(data.class_counts, reverse=True) == [
        4500,
        2697,
        1617,
        969,
        581,
        348,
        208,
        125,
        75,
        45,
    ]
    assert data.class_counts[CIFAR10.index("frog")] == 4500
    assert data.class_counts[CIFAR10.index("truck")] == 45
    names = {k: sorted(CIFAR10[c] for c in v) for k, v in data.groups.items()}
    assert names["frequent"] == ["automobile", "deer", "frog", "ship"]
    assert names["rare"] == ["bird", "dog", "truck"]
    assert names["medium"] == ["airplane", "cat", "horse"]
    assert torch.bincount(data.few_shot.labels).tolist() == [45] * 10
    d_i = np.load(real_cifar10_dir / "split1_D_i.npy")
    assert spelled(data.pretrain.images) == d_i.tolist()  # the indexed images, in file order
    assert data.pretrain.labels.tolist() == labels[d_i].tolist()
    assert "split1_D_i.npy" in data.notes[-1] and "SDCLR split 1" in data.notes[-1]


def test_real_cifar100_files_are_found() -> None:
    folder = SPLITS_DIR / "cifar100"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    paths = sdclr.split_paths(folder, "cifar100", 2)
    assert paths.pretrain.name == "cifar100_split2_D_i.npy"
    assert paths.pool.name == "cifar100_trainIdxList.npy"
    assert len(sdclr.read_indices(paths.pretrain, 50_000)) == 9_754


def _write_splits(folder: Path, labels: np.ndarray | None, split: dict[str, list[int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if labels is not None:
        np.save(folder / "cifar10_train_labels.npy", labels)
    names = {
        "pool": "trainIdxList",
        "val": "valIdxList",
        "pretrain": "split1_D_i",
        "few": "split1_S_b",
    }
    for key, name in names.items():
        np.save(folder / f"{name}.npy", np.asarray(split[key], dtype=np.int64))
    return folder


SMALL_SPLIT = {
    "pool": [0, 1, 2, 3, 4, 5, 6, 7],
    "val": [8, 9],
    "pretrain": [5, 0, 3],
    "few": [1, 2],
}


def test_cifar_python_format_indices_are_direct(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar", per_batch=2, n_test=3)  # 10 images, label i % 10
    splits = _write_splits(tmp_path / "splits", np.arange(10) % 10, SMALL_SPLIT)
    cfg = DataConfig(
        dataset="cifar10", root=str(tmp_path / "cifar"), sdclr_splits=str(splits), split=1
    )
    data = build_data(cfg)
    assert data.pretrain.labels.tolist() == [5, 0, 3]
    assert data.pool.labels.tolist() == list(range(8)) and len(data.test) == 3
    assert data.class_counts == [1, 0, 0, 1, 0, 1, 0, 0, 0, 0]
    wrong = _write_splits(tmp_path / "wrong", np.zeros(10, dtype=np.int64), SMALL_SPLIT)
    with pytest.raises(ValueError, match="labels differ"):
        build_data(
            DataConfig(
                dataset="cifar10", root=str(tmp_path / "cifar"), sdclr_splits=str(wrong), split=1
            )
        )


def test_split_and_index_errors_name_the_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar", per_batch=2)
    splits = _write_splits(tmp_path / "splits", None, SMALL_SPLIT)
    base = DataConfig(dataset="cifar10", root=str(tmp_path / "cifar"), sdclr_splits=str(splits))
    with pytest.raises(ValueError, match=r"data.split=0.*split1_D_i.npy"):
        build_data(base)
    with pytest.raises(FileNotFoundError, match=r"split2_D_i\.npy not found"):
        build_data(replace(base, split=2))
    np.save(splits / "split1_S_b.npy", np.array([3, 10]))
    with pytest.raises(ValueError, match=r"split1_S_b.npy: indices must lie in \[0, 10\)"):
        build_data(replace(base, split=1))


def _jpeg_copy(root: Path, labels: np.ndarray) -> None:
    """train/<class>/<k>.jpg whose constant grey level is 8 * (original index); test/ too."""
    seen = dict.fromkeys(range(10), 0)
    for i, c in enumerate(labels.tolist()):
        grey = np.full((8, 8, 3), 8 * i, dtype=np.uint8)
        save_image(root / "train" / CIFAR10[c] / f"{seen[c]:04d}.jpg", grey, quality=95)
        seen[c] += 1
    for c, name in enumerate(CIFAR10):
        save_image(root / "test" / name / "0000.jpg", np.full((8, 8, 3), c, dtype=np.uint8))


def test_jpeg_copy_maps_original_indices_to_files(tmp_path: Path) -> None:
    labels = np.random.default_rng(3).permutation(np.arange(30) % 10)  # 3 images a class
    _jpeg_copy(tmp_path / "cifar10-jpeg", labels)
    split = {
        "pool": list(range(24)),
        "val": list(range(24, 30)),
        "pretrain": [17, 2, 29, 11],
        "few": [4, 9],
    }
    splits = _write_splits(tmp_path / "splits", labels, split)
    cfg = DataConfig(
        dataset="folder",
        root=str(tmp_path / "cifar10-jpeg"),
        image_size=8,
        sdclr_splits=str(splits),
        split=1,
        cache_dir=str(tmp_path / "cache"),
    )
    data = build_data(cfg)
    grey = data.pretrain.images.float().mean(dim=(1, 2, 3))
    assert torch.allclose(grey, torch.tensor([8.0 * i for i in (17, 2, 29, 11)]), atol=2)
    assert data.pretrain.labels.tolist() == labels[[17, 2, 29, 11]].tolist()
    assert data.classes == CIFAR10 and len(data.test) == 10
    assert data.few_shot.labels.tolist() == labels[[4, 9]].tolist()
    (tmp_path / "cifar10-jpeg" / "train" / CIFAR10[labels[29]] / "0002.jpg").unlink()
    with pytest.raises(
        FileNotFoundError, match="no image numbered 2 for original training index 29"
    ):
        build_data(cfg)
