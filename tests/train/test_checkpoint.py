import json

import pytest
import torch
from safetensors.torch import save_file

from fassl.errors import CheckpointError
from fassl.train.checkpoint import (
    load_checkpoint,
    load_optimizer_state,
    optimizer_state,
    save_checkpoint,
)


def test_roundtrip_with_meta(tmp_path):
    path = tmp_path / "c" / "x.safetensors"
    save_checkpoint(path, {"a": torch.arange(3.0), "m": torch.tensor([True, False])}, {"epoch": 4})
    tensors, meta = load_checkpoint(path)
    assert meta == {"epoch": 4} and tensors["m"].dtype == torch.bool
    assert not list(path.parent.glob(".*tmp*"))  # no temporary file left behind


def test_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors"):
        load_checkpoint(junk)
    other = tmp_path / "other.safetensors"
    save_file({"a": torch.zeros(1)}, str(other))
    with pytest.raises(CheckpointError, match="not a fassl checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_interrupted_save_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, {"a": torch.zeros(2)}, {"epoch": 0})

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("fassl.train.checkpoint.os.replace", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"a": torch.ones(2)}, {"epoch": 1})
    tensors, meta = load_checkpoint(path)
    assert meta["epoch"] == 0 and torch.equal(tensors["a"], torch.zeros(2))


def test_optimizer_state_roundtrip():
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(3, 2)).sum().backward()
    opt.step()
    tensors, groups = optimizer_state(opt)
    opt2 = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    load_optimizer_state(opt2, tensors, groups)
    assert opt2.param_groups[0]["lr"] == 0.1
    for p in net.parameters():
        assert torch.equal(opt.state[p]["momentum_buffer"], opt2.state[p]["momentum_buffer"])


def test_bad_metadata_and_nan_weights_are_named(tmp_path):
    from fassl.train.checkpoint import FORMAT

    bad = tmp_path / "bad.safetensors"
    save_file({"a": torch.zeros(1)}, str(bad), metadata={"format": FORMAT, "meta": "{oops"})
    with pytest.raises(CheckpointError, match=r"bad\.safetensors.*not valid JSON"):
        load_checkpoint(bad)
    listed = tmp_path / "list.safetensors"
    save_file({"a": torch.zeros(1)}, str(listed), metadata={"format": FORMAT, "meta": "[1]"})
    with pytest.raises(CheckpointError, match="not a JSON object"):
        load_checkpoint(listed)
    nan = tmp_path / "nan.safetensors"  # as an earlier version could write it
    tensors = {"w": torch.tensor([1.0, float("inf")]), "i": torch.ones(2)}
    save_file(tensors, str(nan), metadata={"format": FORMAT, "meta": "{}"})
    with pytest.raises(CheckpointError, match=r"nan\.safetensors: 1 tensors hold NaN"):
        load_checkpoint(nan)
    with pytest.raises(CheckpointError, match="not writing"):  # this version never writes it
        save_checkpoint(nan, tensors, {})


def test_stale_temporaries_removed_live_ones_kept(tmp_path):
    import os
    import subprocess
    import sys

    from fassl.train.checkpoint import remove_stale_temporaries

    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead = tmp_path / f".last.safetensors.tmp-{done.stdout.strip()}"
    mine = tmp_path / f".last.safetensors.tmp-{os.getpid()}"  # this process is not saving
    alive = tmp_path / ".last.safetensors.tmp-1"  # pid 1 always runs
    other = tmp_path / "last.safetensors"
    for path in (dead, mine, alive, other):
        path.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([dead, mine])
    assert alive.exists() and other.exists() and not dead.exists()


def test_truncate_metrics_keeps_rows_before_the_step(tmp_path):
    from fassl.train.logger import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "kind": "step"} for s in (0, 5, 9, 10, 14)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(text + '{"step": 15, "ki')  # torn last line of a killed write
    assert truncate_metrics(path, 10) == 3
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 5, 9]
    assert truncate_metrics(path, 10) == 0
