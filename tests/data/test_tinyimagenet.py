"""Tiny-ImageNet in its published layout: folder, .tar.gz and .zip, long-tailed protocol."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from fassl.config import DataConfig, load_config
from fassl.data import build_data
from fassl.data.splits import longtail as lt
from tests.data_fixtures import write_tinyimagenet

WNIDS = ["n03", "n01", "n02"]  # wnids.txt order differs from the sorted label order


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "tiny-imagenet-200"
    return write_tinyimagenet(root, WNIDS, per_class=20, val_per_class=2)


def _cfg(root: Path, cache: Path) -> DataConfig:
    return DataConfig(
        dataset="tinyimagenet",
        root=str(root),
        image_size=64,
        imbalance=4,
        val_per_class=2,
        split=0,
        cache_dir=str(cache),
    )


def _check(data_root: Path, cache: Path) -> None:
    data = build_data(_cfg(data_root, cache), seed=0)
    assert data.name == "Tiny-ImageNet" and data.image_size == 64
    assert data.classes == ["thing 1", "thing 2", "thing 3"]  # sorted wnids, words.txt names
    # pool: 20 - 2 validation = 18 a class, n_max 18, rho 4: 18, 18 * 4^-0.5 = 9, 18 / 4 -> 4
    ranked = [data.class_counts[c] for c in lt.class_rank_permutation(3, 0)]
    assert ranked == [18, 9, 4] and len(data.pretrain) == 31
    assert torch.bincount(data.val.labels).tolist() == [2, 2, 2]
    assert torch.bincount(data.pool.labels).tolist() == [18, 18, 18]
    assert torch.bincount(data.few_shot.labels).tolist() == [1, 1, 1]
    # val_<j> belongs to WNIDS[j % 3]: n03, n01, n02 -> labels 2, 0, 1
    assert data.test.labels.tolist() == [2, 0, 1, 2, 0, 1]
    assert data.groups == lt.frequency_groups(data.class_counts)


def test_folder(tiny_root: Path, tmp_path: Path) -> None:
    _check(tiny_root, tmp_path / "cache")


@pytest.mark.parametrize("kind", ["gztar", "zip"])
def test_archives(tiny_root: Path, tmp_path: Path, kind: str) -> None:
    archive = shutil.make_archive(
        str(tmp_path / "tiny-imagenet-200"), kind, tiny_root.parent, tiny_root.name
    )
    assert archive.endswith((".tar.gz", ".zip"))
    if kind == "gztar":
        with tarfile.open(archive) as tar:
            assert any(n.endswith("val_annotations.txt") for n in tar.getnames())
    _check(Path(archive), tmp_path / "cache")


def test_missing_or_bad_annotations(tiny_root: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_root, tmp_path / "copy")
    notes = copy / "val" / "val_annotations.txt"
    text = notes.read_text()
    notes.write_text(text.replace("val_1.JPEG\tn01", "val_1.JPEG\tn77"))
    with pytest.raises(ValueError, match=r"val_annotations.txt:2: expected 'file<TAB>wnid"):
        build_data(_cfg(copy, tmp_path / "cache"))
    notes.unlink()
    with pytest.raises(FileNotFoundError, match=r"val_annotations\.txt not found"):
        build_data(_cfg(copy, tmp_path / "cache"))


def test_recipes_load() -> None:
    for name in ("tinyimagenet_lt_cpu", "tinyimagenet_lt_gpu", "imagenet100_lt_gpu"):
        path = Path(__file__).resolve().parents[2] / "src/fassl/configs" / f"{name}.yaml"
        cfg = load_config(path)
        assert cfg.data.dataset in ("tinyimagenet", "splitfile")
    gpu = load_config(path)
    assert gpu.model.arch == "resnet50" and not gpu.model.cifar_stem
    assert gpu.data.image_size == 224 and gpu.data.groups == "counts"
    assert gpu.data.split_files.pretrain == "imageNet_100_LT_train.txt"
