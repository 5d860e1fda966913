import pytest
import torch

from fassl.eval.knn import knn_monitor
from fassl.methods import build_method
from fassl.runtime import Runtime
from fassl.train.checkpoint import load_checkpoint
from fassl.train.loop import LAST, NonFiniteLoss, Trainer, batch_indices
from tests.helpers import tiny_config, tiny_data

CPU = Runtime.cpu()


def make_trainer(cfg, name="simclr", data=None, run_dir=None, stage="s"):
    torch.manual_seed(cfg.seed)
    method = build_method(cfg, name)
    return Trainer(method, data or tiny_data(), cfg, cfg.optim, run_dir or cfg.out_dir, CPU, stage)


def test_batch_indices_are_seeded_disjoint_batches():
    a = batch_indices(42, 8, seed=0, epoch=3)
    assert a.shape == (5, 8)
    assert len(set(a.flatten().tolist())) == 40
    assert torch.equal(a, batch_indices(42, 8, seed=0, epoch=3))
    assert not torch.equal(a, batch_indices(42, 8, seed=0, epoch=4))
    with pytest.raises(ValueError, match="larger than"):
        batch_indices(5, 8, 0, 0)


@pytest.mark.parametrize("name", ["sdclr", "byol", "swav"])
def test_resume_matches_uninterrupted_run(tmp_path, monkeypatch, name):
    overrides = ("optim.epochs=3",)
    full = make_trainer(tiny_config(tmp_path / "full", *overrides), name)
    full.fit()

    cfg = tiny_config(tmp_path / "killed", *overrides)
    first = make_trainer(cfg, name)
    original_save = Trainer.save

    def save_then_die(self, epoch):
        original_save(self, epoch)
        if epoch == 1:
            raise KeyboardInterrupt  # killed right after the second epoch's checkpoint

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    monkeypatch.setattr(Trainer, "save", original_save)

    torch.manual_seed(123)  # a fresh process would start from other random weights
    resumed = make_trainer(cfg, name)
    with torch.no_grad():
        for p in resumed.method.parameters():
            p.add_(1.0)
    resumed.fit()
    assert resumed.start_epoch == 2
    a, b = full.method.state_dict(), resumed.method.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_every_epoch_holds_mask(tmp_path):
    t = make_trainer(tiny_config(tmp_path), "sdclr")
    t.fit()
    tensors, meta = load_checkpoint(tmp_path / LAST)
    assert meta["epoch"] == 1 and meta["method"] == "sdclr"
    assert any(k.startswith("model/mask_") for k in tensors)


def test_nan_loss_keeps_last_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, "optim.epochs=3")
    t = make_trainer(cfg)
    original = type(t.method).forward
    calls = {"n": 0}

    def sometimes_nan(self, v1, v2):
        loss, logs = original(self, v1, v2)
        calls["n"] += 1
        if calls["n"] > t.steps_per_epoch:  # the second epoch goes wrong
            loss = loss * float("nan")
        return loss, logs

    monkeypatch.setattr(type(t.method), "forward", sometimes_nan)
    with pytest.raises(NonFiniteLoss, match="last good checkpoint"):
        t.fit()
    _, meta = load_checkpoint(tmp_path / LAST)
    assert meta["epoch"] == 0


def test_resume_refuses_other_stage(tmp_path):
    make_trainer(tiny_config(tmp_path), "simclr", stage="a").fit()
    with pytest.raises(ValueError, match="another out_dir"):
        make_trainer(tiny_config(tmp_path, "optim.epochs=3"), "byol", stage="a").fit()


def test_metrics_log_written(tmp_path):
    cfg, data = tiny_config(tmp_path, "train.knn_every=1"), tiny_data()
    torch.manual_seed(cfg.seed)
    monitors = [knn_monitor(data, cfg.train.knn_k)]
    Trainer(build_method(cfg, "simclr"), data, cfg, cfg.optim, tmp_path, CPU, "s", monitors).fit()
    text = (tmp_path / "metrics.jsonl").read_text()
    assert '"kind": "epoch"' in text and "knn_val_acc" in text
    assert list((tmp_path / "tb").iterdir())


@pytest.mark.parametrize("name", ["simclr", "sdclr"])
def test_backbone_loads_from_training_checkpoint(tmp_path, name):
    from fassl.stages import load_backbone

    t = make_trainer(tiny_config(tmp_path), name)
    t.fit()
    backbone, meta = load_backbone(tmp_path / LAST)
    assert meta["method"] == name
    for k, v in backbone.state_dict().items():
        own = {kk.replace(".dense.", "."): vv for kk, vv in t.method.backbone.state_dict().items()}
        assert torch.equal(v, own[k]), k
