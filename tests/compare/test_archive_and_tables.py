"""A .tar.gz as data.root, comparison arms, and tables rebuilt from finished runs."""

import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from fassl.cli import main
from fassl.compare.arms import baseline_epochs, run_config
from fassl.config import DataConfig, load_config
from fassl.data import build_data
from fassl.errors import ConfigError
from fassl.names import EXPORT
from fassl.recipes import resolve_recipe
from fassl.report.results import COLUMNS


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


def test_fassl_arms_share_prototypes_and_differ_only_in_weight(tmp_path):
    arms = "compare.methods=[fassl,fassl_phi1,fassl_paper,byol]"
    cfg = load_config(resolve_recipe("demo"), [arms])
    base = run_config(cfg, "fassl", 3, tmp_path)
    assert base.rebalance.weight == cfg.rebalance.weight and not base.pipeline.prototypes_checkpoint
    shared = str(tmp_path / "fassl" / "seed3" / "prototypes" / EXPORT)
    for name, weight in [("fassl_phi1", "none"), ("fassl_paper", "paper")]:
        arm = run_config(cfg, name, 3, tmp_path)
        assert arm.rebalance.weight == weight
        assert arm.pipeline.prototypes_checkpoint == shared
        assert arm.out_dir == str(tmp_path / name / "seed3") and arm.seed == 3
    assert run_config(cfg, "fassl_paper", 3, tmp_path).rebalance.strength == 0.0  # Eq. 3 as is
    assert run_config(cfg, "fassl_phi1", 3, tmp_path).rebalance.strength == cfg.rebalance.strength
    given = load_config(resolve_recipe("demo"), [arms, "pipeline.prototypes_checkpoint=p.st"])
    assert run_config(given, "fassl_phi1", 3, tmp_path).pipeline.prototypes_checkpoint == "p.st"
    byol = run_config(cfg, "byol", 3, tmp_path)
    assert byol.method == "byol" and byol.optim.epochs == baseline_epochs(cfg)
    with pytest.raises(ConfigError, match="fassl_bogus"):
        load_config(resolve_recipe("demo"), ["compare.methods=[fassl_bogus]"])


def fake_analysis(rare_top: float) -> dict:
    groups = {"frequent": 0.8, "medium": 0.15, "rare": 0.05}
    top = {"frequent": 0.7, "medium": 0.3 - rare_top, "rare": rare_top}
    diag = {
        "base_share": groups,
        "top_share": top,
        "enrichment": {g: top[g] / groups[g] for g in groups},
        "mean_log_phi": {g: 0.0 for g in groups},
    }
    return {"weights": {"knn": diag}, "prototype_nearest_image_groups": groups}


def test_weight_analyses_are_averaged_over_seeds(tmp_path):
    for arm in ("fassl", "fassl_phi1"):
        for seed, rare_top in ((0, 0.05), (1, 0.15)):
            d = tmp_path / arm / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "results.json").write_text(json.dumps({"standard": {c: 1.0 for c in COLUMNS}}))
            for stage in ("stage1", "stage2"):
                (d / f"analysis_{stage}.json").write_text(json.dumps(fake_analysis(rare_top)))
    assert main(["tables", str(tmp_path)]) == 0
    text = (tmp_path / "weights.md").read_text()
    # stage 1 once (shared by the arms), stage 2 once per arm
    assert text.count("after stage 1 (2 seeds)") == 1 and text.count("after stage 2") == 2
    # Rare top share 0.05 and 0.15 -> 0.100 ± 0.050; enrichment 1 and 3 -> 2.000 ± 1.000
    assert "| knn | 0.200 ± 0.050 | 0.100 ± 0.050 | 1.333 ± 0.333 | 2.000 ± 1.000 |" in text
    assert "Frequent / Medium / Rare: 0.800 ± 0.000 / 0.150 ± 0.000 / 0.050 ± 0.000" in text


def test_archive_extracted_by_two_runs_at_once(tmp_path, monkeypatch):
    # Two runs started together on one archive: the one that renames second keeps the
    # first one's folder instead of failing, and leaves no partial folder behind.
    from fassl.data.files import archives

    src = tmp_path / "src" / "imgs"
    src.mkdir(parents=True)
    (src / "a.txt").write_text("x")
    archive = tmp_path / "imgs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="imgs")
    cache = tmp_path / "cache"
    real_unpack = archives._unpack

    def other_run_finishes_meanwhile(path, dest):
        real_unpack(path, dest)
        digest = archives.content_hash(path, cache / "extracted")
        real_unpack(path, cache / "extracted" / f"{path.name}-{digest[:24]}")

    monkeypatch.setattr(archives, "_unpack", other_run_finishes_meanwhile)
    folder = archives.extract_archive(archive, cache)
    assert (folder / "a.txt").read_text() == "x"
    listed = sorted(p.name for p in (cache / "extracted").iterdir())
    assert listed == sorted([folder.parent.name, archives.HASH_INDEX])
