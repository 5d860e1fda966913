"""Runs under hostile conditions: two runs in one folder, a diverging run, a damaged
checkpoint, Ctrl-C and SIGTERM, a full disk, names that are not UTF-8. Each test can fail:
it checks the one-line message, the exit status, and that nothing was half-written."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fassl import processes
from fassl.cli import main
from fassl.errors import DiskFull, RunConflict
from fassl.files import OutputSet, atomic_path
from fassl.names import EXPORT, LAST
from fassl.processes import LOCK, run_lock
from fassl.train import checkpoint
from fassl.train.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from tests.cli.test_hostile import TINY, fails, run_args, snapshot

REPO = Path(__file__).resolve().parents[2]


# ---- two runs into one folder ----------------------------------------------------------


def test_a_second_run_into_a_held_folder_fails_naming_the_first(capsys, tmp_path):
    out = tmp_path / "run"
    holder = {"pid": os.getppid(), "host": socket.gethostname(), "started": "08:00"}
    out.mkdir()
    (out / LOCK).write_text(json.dumps(holder))
    before = snapshot(out)
    err = fails(capsys, run_args(out), str(out), f"pid {os.getppid()}", "08:00")
    assert "in use by another run" in err
    assert snapshot(out) == before  # nothing written, the first run's lock kept


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with run_lock(tmp_path):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
        with run_lock(tmp_path):  # the same process again (a pretrain run's one stage)
            pass
        assert (tmp_path / LOCK).is_file()
    assert not (tmp_path / LOCK).exists()
    (tmp_path / LOCK).write_text("{half a lo")  # a lock whose writer died mid-write
    with run_lock(tmp_path):
        pass


@pytest.mark.slow
def test_runs_started_together_get_one_lock(tmp_path):
    """Four processes race for the same folder: exactly one holds it (a lock seen before
    its holder had written it used to read as a killed run's and be taken over)."""
    script = (
        "import sys, time\n"
        "from fassl.processes import run_lock\n"
        "from fassl.errors import RunConflict\n"
        "try:\n"
        "    with run_lock(sys.argv[1]):\n"
        "        time.sleep(1.5)\n"
        "    print('held')\n"
        "except RunConflict:\n"
        "    print('refused')\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    said = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert said == ["held", "refused", "refused", "refused"]


def test_lock_without_hard_links_is_still_exclusive(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "hard links not supported", str(dst))

    monkeypatch.setattr(processes.os, "link", no_links)
    with run_lock(tmp_path):
        assert processes.lock_holder(tmp_path)["pid"] == os.getpid()
        assert not processes._create_complete(tmp_path / LOCK, "{}")  # exists: refused
        assert [p.name for p in tmp_path.iterdir()] == [LOCK]  # no temporary left
    assert not (tmp_path / LOCK).exists()


def test_busy_folder_message_names_pid_host_and_start(tmp_path, monkeypatch):
    monkeypatch.setattr(processes, "pid_alive", lambda pid: True)
    (tmp_path / LOCK).write_text(json.dumps({"pid": 4242, "host": "elsewhere", "started": "t0"}))
    busy = pytest.raises(RunConflict, match="pid 4242 on elsewhere, started t0")
    with busy, run_lock(tmp_path):
        pass


# ---- a diverging run never writes non-finite state ------------------------------------


@pytest.mark.slow
def test_divergence_keeps_a_finite_checkpoint_and_names_the_restart(capsys, tmp_path):
    out = tmp_path / "run"
    args = run_args(out, "optim.lr=1e5", "optim.epochs=6", "train.checkpoint_every_s=0")
    err = fails(capsys, args, "--restart", "optim.lr")
    assert "NaN" in err or "inf" in err
    last = out / LAST
    if last.is_file():  # whatever was written is finite, so resume and eval can use it
        tensors, _ = load_checkpoint(last)
        assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
    # the advice works as printed: the same command with the new lr and --restart trains
    fixed = [a for a in args if not a.startswith("optim.lr=")]
    assert main([*fixed, "optim.lr=0.05", "--restart"]) == 0


def test_saving_refuses_non_finite_tensors(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.ones(3)}, {"epoch": 0})
    with pytest.raises(Exception, match="NaN or infinite"):
        save_checkpoint(path, {"w": torch.tensor([1.0, float("inf")])}, {"epoch": 1})
    assert load_checkpoint(path)[1] == {"epoch": 0}  # the previous file kept


# ---- a damaged file is corrupt, not diverged ---------------------------------------------


@pytest.mark.slow
def test_a_flipped_byte_is_reported_as_a_corrupt_file(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(run_args(out)) == 0
    damaged = tmp_path / "damaged.safetensors"
    data = bytearray((out / EXPORT).read_bytes())
    data[-5] ^= 0xFF  # a byte inside the last tensor's data
    damaged.write_bytes(bytes(data))
    err = fails(capsys, ["eval", str(damaged), "--config", "demo", *TINY], "corrupt file")
    assert "diverged" not in err.split("corrupt file")[0]
    # a file of an older version (no checksum) still loads
    tensors, meta = load_checkpoint(out / EXPORT)
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={"format": FORMAT, "meta": json.dumps(meta)})
    assert load_checkpoint(old)[0].keys() == tensors.keys()


# ---- Ctrl-C and SIGTERM ----------------------------------------------------------------


LONG = ("optim.epochs=40", "train.checkpoint_every_s=0")


def _interrupted_run(tmp_path: Path, sig: int) -> tuple[int, str, Path]:
    """A pretrain run in a subprocess, sent ``sig`` once its first checkpoint exists."""
    out = tmp_path / f"run{sig}"
    args = run_args(out, *LONG)
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fassl.cli", *args],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        # a shell's background job (nohup ... &) starts with SIGINT ignored, and an ignored
        # signal stays ignored across exec: give the run Ctrl-C's default, as a terminal does
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not (out / LAST).is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, out


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.slow
def test_interrupt_ends_with_one_line_and_the_run_resumes(tmp_path, sig, status):
    code, err, out = _interrupted_run(tmp_path, sig)
    assert code == status, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "interrupted at epoch" in line and "step" in line and "the same command resumes" in line
    _, meta = load_checkpoint(out / LAST)  # intact
    assert 0 <= meta["epoch"] < 39 and not (out / LOCK).exists()
    assert main(run_args(out, *LONG)) == 0  # the same command resumes and finishes
    assert (out / EXPORT).is_file()


# ---- a full disk -----------------------------------------------------------------------


def test_full_disk_ends_with_one_line_keeping_the_previous_checkpoint(
    capsys, tmp_path, monkeypatch
):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.ones(4)}, {"epoch": 0})

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", no_space)
    with pytest.raises(DiskFull, match=r"c\.safetensors.*needs"):
        save_checkpoint(path, {"w": torch.zeros(4)}, {"epoch": 1})
    assert load_checkpoint(path)[1] == {"epoch": 0}
    assert not list(tmp_path.glob(".*tmp-*"))  # no temporary left behind

    usage = type("Usage", (), {"free": 10})  # 10 bytes free
    monkeypatch.setattr("fassl.files.shutil.disk_usage", lambda _: usage)
    with pytest.raises(DiskFull, match=r"not enough space.*free"):
        save_checkpoint(path, {"w": torch.zeros(4)}, {"epoch": 2})
    out = tmp_path / "run"
    fails(capsys, run_args(out), "not enough space", "last.safetensors")


# ---- nothing half-written --------------------------------------------------------------


def test_a_failing_output_set_leaves_the_previous_files(tmp_path):
    with OutputSet(tmp_path) as out:
        out.write_text("a.txt", "old a")
        out.write_text("b.txt", "old b")
    with pytest.raises(RuntimeError), OutputSet(tmp_path) as out:
        out.write_text("a.txt", "new a")
        raise RuntimeError("the second file fails")
    assert (tmp_path / "a.txt").read_text() == "old a" and (
        tmp_path / "b.txt"
    ).read_text() == "old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    with pytest.raises(ValueError), atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("half")
        raise ValueError
    assert (tmp_path / "a.txt").read_text() == "old a"


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses non-UTF-8 names")
@pytest.mark.slow
def test_non_utf8_names_in_embed_and_rare(tmp_path):
    from tests.data_fixtures import save_image

    out = tmp_path / "run"
    assert main(run_args(out)) == 0
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):
        save_image(folder / f"img{i}.png", rng.integers(0, 255, (12, 12, 3), dtype=np.uint8))
    weird = Path(os.fsdecode(os.fsencode(str(folder)) + b"/caf\xe9.png"))
    save_image(weird, rng.integers(0, 255, (12, 12, 3), dtype=np.uint8))
    emb, rare = tmp_path / "emb", tmp_path / "rare"
    assert main(["embed", str(out / EXPORT), str(folder), "--out", str(emb)]) == 0
    rows = (emb / "index.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + 31 and any("caf\\xe9.png" in r for r in rows)
    assert np.load(emb / "embeddings.npy").shape[0] == 31
    assert (
        main(["rare", str(out / EXPORT), str(folder), "--out", str(rare), "--weights", "knn"]) == 0
    )
    ranked = (rare / "rarity.csv").read_text(encoding="utf-8").splitlines()
    assert len(ranked) == 1 + 31 and any("caf\\xe9.png" in r for r in ranked)


def test_embed_and_rare_without_a_run_config_ask_for_one(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(run_args(out)) == 0
    lonely = tmp_path / "lonely" / EXPORT
    lonely.parent.mkdir()
    lonely.write_bytes((out / EXPORT).read_bytes())
    for command in ("embed", "rare"):
        fails(capsys, [command, str(lonely), "digits"], "--config", str(lonely))


# ---- archives: keyed on content, bounded before unpacking -----------------------------


def _zip_of(folder: Path, archive: Path, colour: int) -> None:
    import zipfile

    from PIL import Image

    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for c in ("a", "b"):
            for i in range(6):
                img = Image.new("RGB", (8, 8), (colour, 10 * i, 40 if c == "a" else 200))
                path = folder / f"{c}{i}.png"
                folder.mkdir(parents=True, exist_ok=True)
                img.save(path)
                zf.write(path, f"photos/{c}/{i}.png")


def test_two_archives_of_one_name_size_and_time_never_share_a_cache_entry(tmp_path):
    from fassl.config import DataConfig
    from fassl.data import build_data

    first, second = tmp_path / "x" / "photos.zip", tmp_path / "y" / "photos.zip"
    _zip_of(tmp_path / "src1", first, 10)
    _zip_of(tmp_path / "src2", second, 250)
    assert first.stat().st_size == second.stat().st_size  # same size, other pixels
    os.utime(second, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns))
    cfg = dict(dataset="folder", labeled=False, image_size=8, cache_dir=str(tmp_path / "cache"))
    a = build_data(DataConfig(root=str(first), **cfg)).pretrain.images
    b = build_data(DataConfig(root=str(second), **cfg)).pretrain.images
    assert a[:, 0].float().mean() < 50 < b[:, 0].float().mean()  # each its own images


def test_a_compressed_bomb_is_refused_before_anything_is_written(capsys, tmp_path):
    import zipfile

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("photos/a/huge.png", b"\0" * (64 << 20))  # 64 MiB of zeros, ~64 KiB packed
    cache = tmp_path / "cache"
    err = fails(
        capsys,
        run_args(
            tmp_path / "run",
            "data.dataset=folder",
            f"data.root={bomb}",
            f"data.cache_dir={cache}",
            "data.labeled=false",
        ),
        "bomb.zip",
        "times its own size",
        "refusing",
    )
    assert "GiB" in err
    extracted = cache / "extracted"
    left = [p.name for p in extracted.iterdir()] if extracted.is_dir() else []
    assert all(not name.startswith("bomb.zip") for name in left), left  # nothing unpacked


# ---- checkpoints handed to a stage ------------------------------------------------------


def test_a_stage_checkpoint_without_what_the_stage_needs_fails_first(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(run_args(out)) == 0  # a simclr export: no prototypes
    pipeline = ["pipeline", "demo", *TINY, f"out_dir={tmp_path / 'p'}"]
    fails(
        capsys,
        [*pipeline, f"pipeline.prototypes_checkpoint={out / EXPORT}"],
        "pipeline.prototypes_checkpoint",
        "no prototypes",
    )
    fails(
        capsys,
        [*pipeline, f"pipeline.teacher_checkpoint={out / EXPORT}", "model.width=8"],
        "pipeline.teacher_checkpoint",
        "model.width 4",
    )
    assert not (tmp_path / "p" / "rebalance").exists()  # refused before anything trained


# ---- every flag of every command has a range ------------------------------------------


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["embed", "C", "digits", "--batch-size", "0"], "--batch-size"),
        (["embed", "C", "digits", "--dtype", "int8"], "--dtype"),
        (["rare", "C", "digits", "--sheet", "-3"], "--sheet"),
        (["rare", "C", "digits", "--batch-size", "x"], "--batch-size"),
        (["tsne", "C", "--per-class", "0"], "--per-class"),
        (["tsne", "C", "--split", "train"], "--split"),
        (["tsne", "C", "--out", "map.jpg"], "--out"),
        (["bench", "--batch", "1"], "--batch"),
        (["bench", "--width", "0,32"], "--width"),
        (["bench", "--method", "simclr,nope"], "--method"),
        (["bench", "--steps", "0"], "--steps"),
        (["bench", "--name", "../x"], "--name"),
    ],
)
def test_out_of_range_flags_are_refused_naming_the_flag(capsys, argv, flag):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3  # usage, maybe wrapped, and the one error


def test_out_that_is_a_file_is_refused(capsys, tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file")
    for argv in (["embed", "C", "digits"], ["export", "C"], ["rare", "C", "digits"]):
        with pytest.raises(SystemExit):
            main([*argv, "--out", str(taken)])
        assert "is a file; --out takes a folder" in capsys.readouterr().err
    assert taken.read_text() == "a file"


def test_recipe_whose_top_level_is_not_a_mapping(capsys, tmp_path):
    recipe = tmp_path / "list.yaml"
    recipe.write_text("- a\n- b\n")
    fails(capsys, ["pretrain", str(recipe)], "list.yaml", "mapping")


def test_an_override_error_names_the_override(capsys, tmp_path):
    err = fails(capsys, ["pretrain", "demo", "optim.lr=fast"], "optim.lr=fast")
    assert "demo.yaml" not in err


def test_a_non_finite_buffer_stops_training_before_it_is_saved(tmp_path, monkeypatch):
    """The loss still reads finite, but a BatchNorm statistic went infinite: the state is
    not written, the epoch-0 checkpoint stays the last one, the message names the buffer."""
    from fassl.errors import NonFiniteLoss
    from fassl.methods import build_method
    from fassl.runtime import Runtime
    from fassl.train.loop import Trainer
    from tests.helpers import tiny_config, tiny_data

    cfg = tiny_config(tmp_path, "optim.epochs=3", "train.checkpoint_every_s=0")
    torch.manual_seed(0)
    trainer = Trainer(
        build_method(cfg, "simclr"), tiny_data(), cfg, cfg.optim, tmp_path, Runtime.cpu(), "s"
    )
    original = Trainer._end_epoch

    def poison_after_the_first_epoch(self, epoch, summary):
        if epoch == 1:
            self.method.encoder.backbone.stem[1].running_var.fill_(float("inf"))
        original(self, epoch, summary)

    monkeypatch.setattr(Trainer, "_end_epoch", poison_after_the_first_epoch)
    with pytest.raises(NonFiniteLoss, match=r"state hold NaN or inf.*running_var.*after epoch 1"):
        trainer.fit()
    tensors, meta = load_checkpoint(tmp_path / LAST)
    assert meta["epoch"] == 0 and all(
        torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()
    )
