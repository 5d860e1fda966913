"""Hostile input: every expected failure exits with status 2 and one clear message naming
the key or file, without a traceback, and leaves what a run folder held untouched."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fassl.cli import main
from fassl.data.sources.folder import load_labeled_folder, load_unlabeled_folder
from fassl.names import EXPORT, LAST
from fassl.train.checkpoint import FORMAT, load_checkpoint
from fassl.train.loop import Trainer
from tests.data_fixtures import save_image, write_cifar10, write_class_folder
from tests.helpers import tiny_config, tiny_data

# digits at 8x8 and a width-4 network: a whole run takes a few seconds
TINY = [
    "model.width=4",
    "model.proj_hidden=16",
    "model.proj_dim=8",
    "data.image_size=8",
    "data.max_per_class=20",
    "data.val_per_class=2",
    "optim.epochs=1",
    "optim.batch_size=16",
    "optim.warmup_epochs=0",
    "train.device=cpu",
    "train.precision=fp32",
    "train.progress=false",
    "probe.fast_epochs=1",
    "probe.knn_k=5",
]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with the hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def fails(capsys, argv: list[str], *names: str) -> str:
    """``fassl argv`` exits with 2 and one message naming each of ``names``."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    message = err[err.index("fassl: error: ") :]  # warning lines may come before it
    assert len(message.strip().splitlines()) <= 2, err
    for name in names:
        assert name in err, (name, err)
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished simclr run on the digits (config.yaml, settings.json, export, reports)."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(run_args(out)) == 0
    return out


def write_unchecked(path: Path, tensors: dict, meta: dict) -> None:
    """A checkpoint as an earlier version could write it: non-finite tensors, no checksum
    (this version's save_checkpoint refuses both)."""
    save_file(tensors, str(path), metadata={"format": FORMAT, "meta": json.dumps(meta)})


def run_args(out: Path, *extra: str) -> list[str]:
    return ["pretrain", "demo", *TINY, f"out_dir={out}", *extra]


def copy_of(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


# ---- config keys: refused before any work, naming the key -------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("pipeline.teacher.batch_size=0", "pipeline.teacher.batch_size"),
        ("prototypes.num_prototypes=0", "prototypes.num_prototypes"),
        ("swav.num_prototypes=0", "swav.num_prototypes"),
        ("data.image_size=0", "data.image_size"),
        ("data.few_shot_fraction=0", "data.few_shot_fraction"),
        ("optim.lr=-1", "optim.lr"),
        ("optim.epochs=-1", "optim.epochs"),
        ("pipeline.rebalance.epochs=0", "pipeline.rebalance.epochs"),
        ("augment.crop_scale_min=2", "augment.crop_scale_min"),
        ("probe.knn_k=0", "probe.knn_k"),
        ("data.dataset=folder", "data.root"),
        ("train.init_from=/no/such.safetensors", "train.init_from"),
    ],
)
def test_bad_key_is_refused(capsys, finished, override, key):
    before = snapshot(finished)
    fails(capsys, run_args(finished, override), key)
    assert snapshot(finished) == before


def test_batch_larger_than_the_data(capsys, tmp_path):
    fails(capsys, run_args(tmp_path / "r", "optim.batch_size=100000"), "optim.batch_size")
    assert not (tmp_path / "r" / "config.yaml").exists()


def test_pipeline_stage_batch_checked_before_the_teacher_trains(capsys, tmp_path):
    small = ["pipeline.teacher.batch_size=16", "pipeline.prototypes.batch_size=16"]
    argv = ["pipeline", "demo", *TINY, *small, f"out_dir={tmp_path}"]
    argv.append("pipeline.rebalance.batch_size=9999")
    fails(capsys, argv, "pipeline.rebalance.batch_size")
    assert not (tmp_path / "teacher").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu(capsys, tmp_path):
    fails(capsys, run_args(tmp_path, "train.device=cuda"), "train.device")


def test_debug_shows_the_traceback(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FASSL_DEBUG", "1")
    assert main(run_args(tmp_path, "optim.lr=-1")) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "optim.lr" in err


# ---- data folders ------------------------------------------------------------------------


def folder_args(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    base = ["pretrain", "demo", *TINY, "data.dataset=folder", f"data.root={root}"]
    return [*base, f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'o'}", *extra]


@pytest.mark.slow
def test_bad_folders(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(capsys, folder_args(empty, tmp_path), "empty")
    hollow = tmp_path / "hollow"
    (hollow / "a").mkdir(parents=True)
    (hollow / "b").mkdir()
    fails(capsys, folder_args(hollow, tmp_path), "hollow", "no class sub-folders")
    flat = tmp_path / "flat"
    for i in range(3):
        save_image(flat / f"{i}.png", np.zeros((8, 8, 3), np.uint8))
    fails(capsys, folder_args(flat, tmp_path), "flat", "data.labeled=false")
    corrupt = tmp_path / "corrupt"
    for c in ("a", "b"):
        (corrupt / c).mkdir(parents=True)
        (corrupt / c / "x.png").write_bytes(b"not a png")
    fails(capsys, folder_args(corrupt, tmp_path), "corrupt", "could be decoded")
    one = tmp_path / "one"
    save_image(one / "x.png", np.zeros((8, 8, 3), np.uint8))
    fails(capsys, folder_args(one, tmp_path, "data.labeled=false"), "too few images", "at least 2")


def test_test_class_missing_from_train(capsys, tmp_path):
    root = tmp_path / "split"
    write_class_folder(root / "train", {"a": 3, "b": 3}, size=8)
    write_class_folder(root / "test", {"a": 1, "zebra": 1}, size=8)
    fails(capsys, folder_args(root, tmp_path), "zebra", "test")


def test_class_too_small_to_split_is_warned(capsys, tmp_path):
    root = write_class_folder(tmp_path / "lt", {"a": 12, "b": 12, "tiny": 1}, size=8)
    argv = folder_args(root, tmp_path, "optim.batch_size=5000", "data.max_per_class=0")
    err = fails(capsys, argv, "too few images")  # one pre-training image: no batch fits
    warning = err.splitlines()[0]
    assert warning.startswith("fassl: warning:") and "'tiny'" in warning and "'a'" not in warning


def test_symlinks_follow_the_policy(tmp_path):
    outside = write_class_folder(tmp_path / "elsewhere", {"x": 2}, size=8)
    root = write_class_folder(tmp_path / "data", {"a": 2, "b": 3}, size=8)
    (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)
    (root / "a" / "b_again").symlink_to(root / "b", target_is_directory=True)
    (root / "a" / "away").symlink_to(outside / "x", target_is_directory=True)
    (root / "b" / "gone.png").symlink_to(tmp_path / "missing.png")
    (root / "b" / "self.png").symlink_to(root / "b" / "self.png")
    data = load_labeled_folder(root, 8)
    assert np.bincount(data.labels).tolist() == [2, 3]  # nothing read twice or from outside
    notes = "\n".join(data.report)
    for what in ("dangling", "leaving the data folder", "looping", "already read"):
        assert what in notes, (what, notes)
    assert "gone.png" in notes and "away" in notes


def test_non_utf8_file_name_is_reported_safely(tmp_path):
    root = write_class_folder(tmp_path / "data", {"a": 3}, size=8)
    bad = os.fsencode(root / "a") + b"/bad\xff.png"
    with open(bad, "wb") as f:
        f.write(b"garbage")
    data = load_unlabeled_folder(root, 8)
    notes = "\n".join(data.report)
    assert "bad\\xff.png" in notes
    notes.encode("utf-8")  # writable as UTF-8 (report.md)


def test_malicious_cifar_pickle(capsys, tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    folder = write_cifar10(tmp_path)
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": Exploit()}, protocol=2))
    argv = [*run_args(tmp_path / "o"), "data.dataset=cifar10", f"data.root={tmp_path}"]
    fails(capsys, argv, "data_batch_1", "refusing")


@pytest.mark.parametrize("kind", ["dotdot", "abslink"])
def test_hostile_archive(capsys, tmp_path, kind):
    archive = tmp_path / "imgs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("imgs/a/../../../evil.png" if kind == "dotdot" else "imgs/a/x.png")
        if kind == "abslink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    fails(capsys, folder_args(archive, tmp_path), "imgs.tar.gz")
    assert not (tmp_path.parent / "evil.png").exists()


# ---- checkpoints ---------------------------------------------------------------------------


def rewrite(src: Path, dest: Path, meta: object = None, raw_meta: str | None = None) -> Path:
    tensors, old = load_checkpoint(src)
    from safetensors.torch import save_file

    text = raw_meta if raw_meta is not None else json.dumps(old if meta is None else meta)
    save_file(tensors, str(dest), metadata={"format": FORMAT, "meta": text})
    return dest


@pytest.mark.slow
def test_bad_checkpoint_headers(capsys, finished, tmp_path):
    export = finished / EXPORT
    _, meta = load_checkpoint(export)
    cases = {
        "json.safetensors": dict(raw_meta="{not json"),
        "noarch.safetensors": dict(meta={k: v for k, v in meta.items() if k != "model"}),
        "arch.safetensors": dict(meta=meta | {"model": meta["model"] | {"arch": "vgg"}}),
        "wide.safetensors": dict(meta=meta | {"model": meta["model"] | {"width": 100000}}),
    }
    for name, kwargs in cases.items():
        path = rewrite(export, tmp_path / name, **kwargs)
        fails(capsys, ["eval", str(path), "--config", "demo", *TINY], name)


@pytest.mark.slow
def test_nan_weights_refused_everywhere(capsys, finished, tmp_path):
    tensors, meta = load_checkpoint(finished / EXPORT)
    tensors["backbone.stem.0.weight"][0] = float("nan")
    nan = tmp_path / "nan.safetensors"
    write_unchecked(nan, tensors, meta)
    fails(capsys, ["eval", str(nan), "--config", "demo", *TINY], "nan.safetensors", "NaN")
    fails(capsys, run_args(tmp_path / "r", f"train.init_from={nan}"), "NaN")
    resumed = tmp_path / "resumed"
    last, last_meta = load_checkpoint(next(finished.glob(LAST)))
    last[next(k for k in last if k.startswith("model/") and k.endswith("weight"))].fill_(np.inf)
    (resumed / LAST).parent.mkdir(parents=True)
    write_unchecked(resumed / LAST, last, last_meta | {"stage": "resumed"})
    fails(capsys, run_args(resumed), "last.safetensors", "NaN")


# ---- eval finds the run's own config -------------------------------------------------------


def test_eval_uses_the_runs_config(capsys, finished, tmp_path):
    ckpt = tmp_path / "lonely" / EXPORT
    ckpt.parent.mkdir()
    ckpt.write_bytes((finished / EXPORT).read_bytes())
    fails(capsys, ["eval", str(ckpt)], "--config", str(ckpt))
    out = tmp_path / "e"
    assert main(["eval", str(finished / EXPORT), f"out_dir={out}", "probe.fast_epochs=1"]) == 0
    said = capsys.readouterr().out
    assert f"using the run's config {finished / 'config.yaml'}" in said
    assert json.loads((out / "results.json").read_text())["method"] == "simclr"


# ---- reruns into an existing run folder ----------------------------------------------------


def test_changed_settings_are_refused_and_nothing_is_lost(capsys, finished):
    before = snapshot(finished)
    err = fails(capsys, run_args(finished, "optim.lr=0.1", "simclr.temperature=0.5"), "optim.lr")
    assert "simclr.temperature" in err and "--restart" in err
    assert snapshot(finished) == before


def test_neutral_keys_do_not_count(finished):
    from fassl.config import load_config
    from fassl.runs.settings import settings_for

    def settings(*extra):
        cfg = load_config(None, [*TINY, "data.dataset=digits", *extra])
        return settings_for(cfg, cfg.method, cfg.optim)

    base = settings()
    neutral = ("train.progress=true", "probe.fast_epochs=7", "out_dir=elsewhere")
    assert settings(*neutral, "train.log_every=3", "train.checkpoint_every_s=1") == base
    assert settings("compare.seeds=[5]") == base
    assert settings("optim.lr=0.3") != base
    assert settings("prototypes.num_prototypes=3") == base  # another method's section


def test_restart_trains_again(capsys, finished, tmp_path):
    out = copy_of(finished, tmp_path / "r")
    fails(capsys, run_args(out, "optim.lr=0.2"), "optim.lr")
    assert main([*run_args(out, "optim.lr=0.2"), "--restart"]) == 0
    assert json.loads((out / "settings.json").read_text())["optim.lr"] == 0.2


def test_old_run_folder_without_settings_still_works(capsys, finished, tmp_path):
    out = copy_of(finished, tmp_path / "old" / finished.name)
    (out / "settings.json").unlink()
    assert main(run_args(out, "probe.fast_epochs=2")) == 0
    assert "already done" in capsys.readouterr().out


# ---- resume: a clean record ----------------------------------------------------------------


def rows(path: Path) -> list[tuple]:
    out = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        out.append((row["kind"], row["step"], round(row.get("loss", 0.0), 4)))
    return out


@pytest.mark.slow
def test_resumed_metrics_equal_an_uninterrupted_run(tmp_path, monkeypatch):
    overrides = ("optim.epochs=3", "train.checkpoint_every_s=0", "train.log_every=1")

    def trainer(out):
        cfg = tiny_config(out, *overrides)
        from fassl.methods import build_method
        from fassl.runtime import Runtime

        torch.manual_seed(cfg.seed)
        method = build_method(cfg, "simclr")
        return Trainer(method, tiny_data(), cfg, cfg.optim, out, Runtime.cpu(), "s")

    trainer(tmp_path / "full").fit()
    killed = tmp_path / "killed"
    original = Trainer.train_step

    def die_late_in_epoch_2(self, index, step, *rows):
        if step == 2 * self.steps_per_epoch - 1:  # epoch 2 logged rows but never saved
            raise KeyboardInterrupt
        return original(self, index, step, *rows)

    monkeypatch.setattr(Trainer, "train_step", die_late_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        trainer(killed).fit()
    monkeypatch.setattr(Trainer, "train_step", original)
    stale = killed / "checkpoints" / ".last.safetensors.tmp-999999999"
    stale.write_bytes(b"half a checkpoint")
    assert len(rows(killed / "metrics.jsonl")) > len(rows(tmp_path / "full" / "metrics.jsonl")) / 3
    trainer(killed).fit()
    assert rows(killed / "metrics.jsonl") == rows(tmp_path / "full" / "metrics.jsonl")
    assert not stale.exists()


@pytest.mark.slow
def test_pipeline_rerun_checks_each_stage_and_restarts_from_one(tmp_path):
    from fassl.errors import RunConflict
    from fassl.runs.pipeline import run_pipeline
    from fassl.runs.settings import prepare_pipeline
    from fassl.runtime import Runtime

    stages = [
        f"pipeline.{s}.{k}"
        for s in ("teacher", "prototypes", "rebalance")
        for k in ("epochs=1", "batch_size=8")
    ]

    def pipeline(*extra, restart=""):
        probes = ("probe.settings=[standard]", "probe.fast_epochs=1", "probe.knn_k=3")
        cfg = tiny_config(tmp_path, *stages, *probes, *extra)
        return run_pipeline(cfg, Runtime.cpu(), data=tiny_data(), restart=restart)

    pipeline()
    before = snapshot(tmp_path)
    with pytest.raises(RunConflict, match=r"prototypes was trained .*prototypes\.temperature"):
        pipeline("prototypes.temperature=0.5", "pipeline.rebalance.lr=0.01")
    with pytest.raises(RunConflict, match=r"pipeline\.rebalance\.lr.*\n.*--restart rebalance"):
        pipeline("pipeline.rebalance.lr=0.01")
    assert snapshot(tmp_path) == before  # config.yaml and every stage as they were
    teacher = (tmp_path / "teacher" / EXPORT).stat().st_mtime_ns
    prototypes = (tmp_path / "prototypes" / EXPORT).stat().st_mtime_ns
    pipeline("pipeline.rebalance.lr=0.01", restart="rebalance")
    assert (tmp_path / "teacher" / EXPORT).stat().st_mtime_ns == teacher
    assert (tmp_path / "prototypes" / EXPORT).stat().st_mtime_ns == prototypes
    recorded = json.loads((tmp_path / "rebalance" / "settings.json").read_text())
    assert recorded["pipeline.rebalance.lr"] == 0.01
    assert "lr: 0.01" in (tmp_path / "config.yaml").read_text()
    neutral = ("probe.fast_epochs=2", "train.progress=true", "train.log_every=1")
    cfg = tiny_config(tmp_path, *stages, "pipeline.rebalance.lr=0.01", *neutral)
    assert prepare_pipeline(cfg) == []  # consistent: nothing to restart, no error
