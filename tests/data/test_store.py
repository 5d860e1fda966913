"""The image store: built once, read memory-mapped, rebuilt shard by shard, one builder at
a time, and every command that reads a folder reads it."""

from __future__ import annotations

import itertools
import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fassl.config import DataConfig
from fassl.data import build_data
from fassl.data.files import store
from fassl.data.files.decode import decode_files
from fassl.data.files.store import StoreImages, build_store, shard_bounds
from fassl.data.sources import folder
from tests.data_fixtures import save_image

SIZE = 8


def photo_folder(root: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` random 12x10 PNGs in three class folders; the sorted relative paths."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
        save_image(root / f"c{i % 3}" / f"{i:03d}.png", pixels)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))


@pytest.fixture
def small_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "SHARD_AVERAGE", 4)  # several shards from a few files


def test_shard_cuts_depend_on_the_paths_alone(small_shards: None) -> None:
    files = [f"c/{i:04d}.png" for i in range(200)]
    bounds = shard_bounds(files)
    assert bounds[0][0] == 0 and bounds[-1][1] == 200 and len(bounds) > 10
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    # one file inserted: every cut before it and after its shard stays where it was
    inserted = sorted([*files, "c/0100x.png"])
    cuts = {files[stop - 1] for _, stop in bounds}
    new_cuts = {inserted[stop - 1] for _, stop in shard_bounds(inserted)}
    assert len(cuts ^ new_cuts) <= 1


def test_store_holds_the_in_memory_pixels_and_is_built_once(tmp_path: Path, small_shards) -> None:
    root = tmp_path / "photos"
    files = photo_folder(root, 30)
    where = tmp_path / "cache" / "s"
    built = build_store(where, root, files, SIZE, workers=2, progress=False)
    assert built.decoded == 30 and len(built.names) > 2
    images = StoreImages.open(built, SIZE)
    eager = decode_files(root, files, [0] * len(files), ["a"], SIZE, [])
    assert images.shape == (30, 3, SIZE, SIZE)
    assert np.array_equal(images.load(), eager.images)
    again = build_store(where, root, files, SIZE, workers=1, progress=False)
    assert again.decoded == 0 and again.names == built.names


def test_a_changed_or_added_file_redecodes_its_own_shard(tmp_path: Path, small_shards) -> None:
    root = tmp_path / "photos"
    files = photo_folder(root, 40)
    where = tmp_path / "s"
    built = build_store(where, root, files, SIZE, workers=1, progress=False)
    sizes = {n: len(i.files) for n, i in zip(built.names, built.infos, strict=True)}
    # another image under the same name: only the shard that holds it is decoded again
    changed = files[17]
    save_image(root / changed, np.full((10, 12, 3), 7, np.uint8))
    rebuilt = build_store(where, root, files, SIZE, workers=1, progress=False)
    stale = next(n for n, i in zip(built.names, built.infos, strict=True) if changed in i.files)
    assert rebuilt.decoded == sizes[stale] < 40 and rebuilt.removed == 1
    assert not (where / f"{stale}.npy").exists()
    row = StoreImages.open(rebuilt, SIZE)[files.index(changed)]
    assert torch.equal(row, torch.full((3, SIZE, SIZE), 7, dtype=torch.uint8))
    # a whole class folder removed: the shards that only held its files go
    for f in files:
        if f.startswith("c2/"):
            (root / f).unlink()
    kept = [f for f in files if not f.startswith("c2/")]
    smaller = build_store(where, root, kept, SIZE, workers=1, progress=False)
    assert len(list(where.glob("*.npy"))) == len(smaller.names)
    assert StoreImages.open(smaller, SIZE).shape[0] == len(kept)


def _build_in_process(args: tuple[str, str, list[str]]) -> int:
    where, root, files = args
    return build_store(Path(where), Path(root), files, SIZE, workers=1, progress=False).decoded


def test_one_builder_at_a_time_the_others_read_its_shards(tmp_path: Path) -> None:
    """Two processes (two ranks, or two runs sharing a cache) open the same new store:
    the files are decoded once."""
    root = tmp_path / "photos"
    files = photo_folder(root, 24)
    job = (str(tmp_path / "s"), str(root), files)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        decoded = pool.map(_build_in_process, [job, job])
    assert sorted(decoded) == [0, 24]


def test_store_images_index_like_a_tensor(tmp_path: Path, small_shards) -> None:
    root = tmp_path / "photos"
    files = photo_folder(root, 20)
    images = StoreImages.open(build_store(tmp_path / "s", root, files, SIZE, 1, False), SIZE)
    whole = torch.from_numpy(images.load())
    index = torch.tensor([19, 0, 7, 7, 12])
    assert torch.equal(images[index], whole[index])
    assert torch.equal(images[3], whole[3]) and torch.equal(images[2:9:3], whole[2:9:3])
    mask = torch.arange(20) % 3 == 0
    assert torch.equal(images[mask], whole[mask])
    view = images.take(np.array([5, 1, 16]))  # nothing read; a view's rows
    assert len(view) == 3 and torch.equal(view[torch.tensor([2, 0])], whole[[16, 5]])
    copy = pickle.loads(pickle.dumps(view))  # a worker process opens its own maps
    assert copy._maps is None and torch.equal(copy[1], whole[1])
    with pytest.raises(IndexError):
        images[torch.tensor([20])]


def test_unreadable_files_are_named_and_left_out(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    photo_folder(root, 6)
    (root / "c0" / "broken.png").write_bytes(b"not a png")
    cfg = DataConfig(
        dataset="folder",
        root=str(root),
        labeled=False,
        image_size=SIZE,
        cache_dir=str(tmp_path / "cache"),
    )
    data = folder.load_stored(cfg, root)
    assert len(data) == 6 and "c0/broken.png" not in data.paths
    assert any("skipped 1 unreadable image file" in line for line in data.report)


def test_a_large_folder_stays_on_disk_and_trains_like_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fassl.config import load_config
    from fassl.methods import build_method
    from fassl.runtime import Runtime
    from fassl.train.loop import Trainer

    root = tmp_path / "photos"
    photo_folder(root, 48)
    overrides = [
        "data.dataset=folder",
        f"data.root={root}",
        "data.labeled=false",
        f"data.image_size={SIZE}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "model.width=4",
        "model.proj_hidden=16",
        "model.proj_dim=8",
        "optim.batch_size=8",
        "optim.epochs=2",
        "train.device=cpu",
        "train.precision=fp32",
        "train.progress=false",
    ]

    def trained(name: str) -> dict[str, torch.Tensor]:
        cfg = load_config(None, [*overrides, f"out_dir={tmp_path / name}"])
        data = build_data(cfg.data, cfg.seed)
        torch.manual_seed(0)
        method = build_method(cfg, "simclr")
        t = Trainer(method, data, cfg, cfg.optim, tmp_path / name, Runtime.cpu(), "s")
        assert isinstance(t.images, StoreImages) == (name == "mapped")
        t.fit()
        return method.state_dict()

    in_memory = trained("memory")
    monkeypatch.setattr(store, "IN_MEMORY_BYTES", 0)
    mapped = trained("mapped")
    for k, v in in_memory.items():
        assert torch.equal(v, mapped[k]), k


def test_large_images_are_stored_as_jpeg_records_and_decoded_by_loader_workers(
    tmp_path: Path, small_shards
) -> None:
    """Above FIXED_MAX_SIZE a record is the resized crop as a JPEG (quality 95): a
    third of the bytes or less, within a few grey levels of the pixels, the same through the
    loader's worker processes as read in the caller."""
    size = 100
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:120, 0:140]
    for i in range(12):  # smooth images, as photos are: JPEG's case
        base = (np.sin(xx / (7 + i)) + np.cos(yy / (5 + i))) * 60 + 128
        pixels = np.stack([base, base[::-1], base[:, ::-1]], -1) + rng.normal(0, 2, (120, 140, 3))
        save_image(root / f"{i:02d}.png", np.clip(pixels, 0, 255).astype(np.uint8))
    files = sorted(p.name for p in root.iterdir())
    built = build_store(tmp_path / "s", root, files, size, workers=2, progress=False)
    assert all(info.offsets is not None for info in built.infos)
    on_disk = sum((tmp_path / "s" / f"{n}.npy").stat().st_size for n in built.names)
    assert on_disk < 12 * 3 * size * size / 3
    images = StoreImages.open(built, size, workers=2)
    eager = decode_files(root, files, [0] * 12, ["a"], size, []).images.astype(float)
    stored = images.load().astype(float)
    psnr = 10 * np.log10(255**2 / np.mean((stored - eager) ** 2))
    assert psnr > 35, psnr
    batches = [torch.tensor([3, 0, 11]), torch.tensor([5]), torch.tensor([7, 7])]
    through_workers = list(images.batches(batches))
    assert all(torch.equal(a, images[b]) for a, b in zip(through_workers, batches, strict=True))


def test_fassl_prepare_builds_the_store_a_run_then_reads(tmp_path: Path, capsys) -> None:
    from fassl.cli import main

    root = tmp_path / "photos"
    photo_folder(root, 9)
    keys = [f"data.cache_dir={tmp_path / 'cache'}", f"data.image_size={SIZE}"]
    assert main(["prepare", str(root), "data.labeled=false", *keys]) == 0
    out = capsys.readouterr().out
    assert "9 images, decoded 9 into the image store" in out and "1 shard, " in out
    cfg = DataConfig(
        dataset="folder",
        root=str(root),
        labeled=False,
        image_size=SIZE,
        cache_dir=str(tmp_path / "cache"),
    )
    assert "9 images, read from the image store" in build_data(cfg).notes[0]
