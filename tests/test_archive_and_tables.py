"""A .tar.gz as data.root, and comparison tables rebuilt from finished runs."""

import json
import tarfile

import numpy as np
from PIL import Image

from fassl.cli import main
from fassl.config import DataConfig
from fassl.data.build import build_data


def make_folder(root, per_class=12, size=8):
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 4)):
        for c in ("a", "b", "c"):
            d = root / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.png")


def test_tar_gz_root_is_unpacked_once(tmp_path):
    make_folder(tmp_path / "src")
    archive = tmp_path / "imgs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "imgs", arcname="imgs")
    cfg = DataConfig(
        dataset="folder",
        root=str(archive),
        image_size=8,
        val_per_class=2,
        imbalance=2.0,
        cache_dir=str(tmp_path / "cache"),
    )
    data = build_data(cfg)
    assert data.classes == ["a", "b", "c"] and len(data.test) == 12
    unpacked = list((tmp_path / "cache").rglob("imgs/train"))
    assert len(unpacked) == 1
    mtime = unpacked[0].stat().st_mtime_ns
    build_data(cfg)
    assert unpacked[0].stat().st_mtime_ns == mtime  # not unpacked again


def test_tables_from_finished_runs(tmp_path, capsys):
    row = {"all": 50.0, "rare": 40.0, "medium": 50.0, "frequent": 60.0, "std": 8.16}
    for method, seeds in (("simclr", (0, 1)), ("fassl", (0,))):
        for seed in seeds:
            d = tmp_path / method / f"seed{seed}"
            d.mkdir(parents=True)
            r = dict(row, all=row["all"] + seed)
            (d / "results.json").write_text(json.dumps({"standard": r}))
    assert main(["tables", str(tmp_path), "--paper"]) == 0
    text = (tmp_path / "comparison.md").read_text()
    assert "| simclr | 2 | 50.50 ± 0.50" in text and "*simclr (paper)*" in text
    assert (tmp_path / "comparison.png").is_file() and (tmp_path / "comparison.csv").is_file()
    assert main(["tables", str(tmp_path / "empty")]) == 2
