"""Image sources (CIFAR python format, image folders, digits), their registry, the cache."""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fassl import config
from fassl.config import DataConfig
from fassl.data import build_data, sources
from fassl.data.sources import cifar, digits, folder
from tests.data_fixtures import random_images, rgb, save_image, write_cifar10, write_cifar100

# ------------------------------------------------------------------------ registry


def test_registry_lists_the_config_choices() -> None:
    assert config.DATASETS == sources.DATASETS == tuple(sources.SOURCES)


def test_unknown_dataset_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        build_data(DataConfig(dataset="nope"))


# ------------------------------------------------------------------------ CIFAR


@pytest.mark.parametrize("py2", [True, False])
def test_cifar10_python_format(tmp_path: Path, py2: bool) -> None:
    write_cifar10(tmp_path, per_batch=4, n_test=6, py2=py2)
    train, test = cifar.load_cifar(tmp_path, "cifar10")
    images = random_images(26)  # the same draw the writer used
    assert train.images.dtype == np.uint8 and train.images.shape == (20, 3, 32, 32)
    assert np.array_equal(train.images, images[:20]) and np.array_equal(test.images, images[20:])
    assert train.labels.dtype == np.int64
    assert train.labels.tolist() == [i % 10 for i in range(20)]
    assert test.labels.tolist() == list(range(6))
    assert train.classes == [f"class{c}" for c in range(10)] == test.classes


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    write_cifar100(tmp_path, n_train=8, n_test=4)
    train, test = cifar.load_cifar(tmp_path, "cifar100")
    assert train.images.shape == (8, 3, 32, 32) and len(test) == 4
    assert train.labels.tolist() == [(7 * i) % 100 for i in range(8)]
    assert len(train.classes) == 100 and train.classes[3] == "fine3"


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo owned",))


def test_cifar_unpickler_refuses_code(tmp_path: Path) -> None:
    batches = write_cifar10(tmp_path)
    (batches / "data_batch_1").write_bytes(pickle.dumps({"data": _Exploit()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        cifar.load_cifar(tmp_path, "cifar10")


def test_cifar_missing_names_path_and_download(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        cifar.load_cifar(tmp_path, "cifar10")
    message = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in message
    assert "data.download=true" in message and "cifar-10-python.tar.gz" in message


def _fake_archive(tmp_path: Path) -> Path:
    """A cifar-10-python.tar.gz holding a tiny folder in the official layout."""
    src = tmp_path / "src"
    write_cifar10(src)
    archive = tmp_path / "fake.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive


def test_download_checks_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = _fake_archive(tmp_path)
    fetched = []

    def fake_fetch(url: str, dest: Path) -> None:
        fetched.append(url)
        dest.write_bytes(archive.read_bytes())

    monkeypatch.setattr(cifar, "_fetch", fake_fetch)
    root = tmp_path / "data"
    with pytest.raises(OSError, match="does not match"):
        cifar.load_cifar(root, "cifar10", download=True)
    assert fetched == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert not list(root.glob("*.part"))

    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    spec = replace(cifar.CIFAR_SPECS["cifar10"], md5=md5)
    monkeypatch.setitem(cifar.CIFAR_SPECS, "cifar10", spec)
    train, _ = cifar.load_cifar(root, "cifar10", download=True)
    assert len(train) == 20 and (root / "cifar-10-python.tar.gz").is_file()


# ------------------------------------------------------------------------ folders


@pytest.fixture()
def messy_folder(tmp_path: Path) -> Path:
    """Two classes with every kind of file a user's folder may hold."""
    root = tmp_path / "messy"
    save_image(root / "cat" / "rgb.png", rgb((10, 20, 30)))
    save_image(root / "cat" / "gray.png", Image.new("L", (32, 32), 77))
    save_image(root / "cat" / "rgba.PNG", Image.new("RGBA", (32, 32), (200, 100, 50, 128)))
    save_image(
        root / "cat" / "nested" / "deep" / "pal.gif", Image.new("RGB", (32, 32), "red").convert("P")
    )
    save_image(root / "dog" / "sixteen.png", Image.fromarray(np.full((32, 32), 65535, np.uint16)))
    save_image(root / "dog" / "cmyk.jpg", Image.new("CMYK", (32, 32), (0, 0, 0, 0)))
    save_image(root / "dog" / "odd.jpg", rgb((0, 255, 0), size=(40, 64)), quality=95)
    good = save_image(root / "dog" / "truncated.jpg", random_images(1)[0].transpose(1, 2, 0))
    good.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / ".DS_Store").write_bytes(b"\0\1")
    return root


def test_labeled_folder_converts_and_reports(messy_folder: Path) -> None:
    data = folder.load_labeled_folder(messy_folder, 32)
    assert data.classes == ["cat", "dog"]
    assert data.images.shape == (7, 3, 32, 32) and data.images.dtype == np.uint8
    assert data.labels.tolist() == [0, 0, 0, 0, 1, 1, 1]
    by_name = dict(zip(["gray", "pal", "rgb", "rgba"], data.images[:4], strict=True))
    assert (by_name["gray"] == 77).all()
    assert by_name["rgb"][:, 0, 0].tolist() == [10, 20, 30]
    assert by_name["pal"][:, 0, 0].tolist() == [255, 0, 0]
    assert (data.images[6] == 255).all()  # 16-bit 65535 scales to 255, not clipped
    report = "\n".join(data.report)
    for line in (
        "converted 1 grayscale image to RGB",
        "converted 1 RGBA image to RGB",
        "converted 1 palette image to RGB",
        "converted 1 16-bit image to RGB",
        "converted 1 CMYK image to RGB",
        "resized 1 image to 32x32",
        "ignored 1 non-image file",
    ):
        assert line in report
    skipped = [line for line in data.report if line.startswith("skipped")]
    assert len(skipped) == 1 and "truncated.jpg" in skipped[0]


def test_odd_size_is_resized_then_centre_cropped(tmp_path: Path) -> None:
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 20:40] = 255  # a white band in the middle third
    save_image(tmp_path / "a" / "wide.png", wide)
    data = folder.load_labeled_folder(tmp_path, 10)
    assert data.images.shape == (1, 3, 10, 10)
    assert (data.images[0, :, :, 2:8] > 200).all()  # the centre survives the crop


def test_large_jpeg_is_fitted(tmp_path: Path) -> None:
    photo = rgb((200, 40, 90), size=(480, 640))
    photo[:, :320] = (10, 220, 30)  # left half green, right half magenta
    save_image(tmp_path / "a" / "photo.jpg", photo, quality=95)
    data = folder.load_labeled_folder(tmp_path, 16)
    assert data.images.shape == (1, 3, 16, 16)
    left, right = data.images[0, :, 8, 2].astype(int), data.images[0, :, 8, 13].astype(int)
    assert np.abs(left - [10, 220, 30]).max() < 12 and np.abs(right - [200, 40, 90]).max() < 12


def test_unlabeled_folder_recursive(tmp_path: Path) -> None:
    save_image(tmp_path / "x.png", rgb(1))
    save_image(tmp_path / "a" / "b" / "y.JPEG", rgb(2))
    save_image(tmp_path / ".hidden" / "z.png", rgb(3))
    data = folder.load_unlabeled_folder(tmp_path, 32)
    assert len(data) == 2 and data.labels.tolist() == [-1, -1] and data.classes == []


def test_test_folder_uses_the_train_classes(tmp_path: Path) -> None:
    save_image(tmp_path / "dog" / "1.png", rgb(1))
    data = folder.load_labeled_folder(tmp_path, 32, classes=["cat", "dog"])
    assert data.labels.tolist() == [1] and data.classes == ["cat", "dog"]
    with pytest.raises(ValueError, match=r"\['dog'\] are not among"):
        folder.load_labeled_folder(tmp_path, 32, classes=["cat"])


def test_folder_errors_name_the_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        folder.load_labeled_folder(missing, 32)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"no image files .* in {empty}"):
        folder.load_unlabeled_folder(empty, 32)
    with pytest.raises(ValueError, match=f"{empty} has no class sub-folders"):
        folder.load_labeled_folder(empty, 32)
    broken = tmp_path / "broken"
    (broken / "cat").mkdir(parents=True)
    (broken / "cat" / "a.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match=f"none of the 1 image files in {broken}"):
        folder.load_labeled_folder(broken, 32)
    loose = tmp_path / "loose"
    save_image(loose / "a.png", rgb(1))
    with pytest.raises(ValueError, match="labeled=false"):
        folder.load_labeled_folder(loose, 32)


# ------------------------------------------------------------------------ digits


def test_digits_are_upscaled_rgb() -> None:
    data = digits.load_digits(16)
    assert data.images.shape == (1797, 3, 16, 16) and data.images.dtype == np.uint8
    assert data.images.max() == 255 and data.images.min() == 0
    assert (data.images[:, 0] == data.images[:, 2]).all()
    assert data.classes == [str(d) for d in range(10)]
    assert np.bincount(data.labels).tolist()[:2] == [178, 182]


# ------------------------------------------------------------------------ cache


def test_build_reads_a_folder_through_the_cache(tmp_path: Path) -> None:
    for c in range(3):
        for i in range(12):
            save_image(tmp_path / "data" / f"c{c}" / f"{i}.png", rgb(c * 10 + i))
    cfg = DataConfig(
        dataset="folder",
        root=str(tmp_path / "data"),
        cache_dir=str(tmp_path / "cache"),
        imbalance=2,
        val_per_class=1,
    )
    first = build_data(cfg)
    assert "images, decoded 36 into the image store" in first.notes[0]
    second = build_data(cfg)
    assert "images, read from the image store" in second.notes[0]
    assert np.array_equal(first.pretrain.images.numpy(), second.pretrain.images.numpy())


def test_cifar_without_root_looks_in_the_cache_dir(tmp_path: Path) -> None:
    cfg = DataConfig(dataset="cifar100", cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "cifar-100-python" / "train")):
        build_data(cfg)
