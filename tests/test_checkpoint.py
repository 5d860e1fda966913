import pytest
import torch
from safetensors.torch import save_file

from fassl.train.checkpoint import (
    CheckpointError,
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
