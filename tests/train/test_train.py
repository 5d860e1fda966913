import pytest
import torch

from fassl.errors import ConfigError, Interrupted, NonFiniteLoss, RunConflict
from fassl.eval.knn import knn_monitor
from fassl.methods import build_method
from fassl.names import LAST
from fassl.runtime import Runtime
from fassl.train.checkpoint import load_checkpoint
from fassl.train.loop import Trainer, batch_indices
from tests.helpers import tiny_config, tiny_data

# The training loop end to end: `make test` runs these again on the AVX2 kernels (Makefile).
pytestmark = pytest.mark.trains

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


def test_a_trainer_refuses_a_batch_larger_than_the_data(tmp_path):
    # the one batch-size check (train.loop.check_batch_size), before any step
    cfg = tiny_config(tmp_path, "optim.batch_size=4096")
    with pytest.raises(ConfigError, match=r"'optim.batch_size' \(4096\) is larger than"):
        make_trainer(cfg)


@pytest.mark.parametrize(
    "name, optimizer", [("sdclr", "sgd"), ("byol", "sgd"), ("swav", "sgd"), ("simclr", "adamw")]
)
def test_resume_matches_uninterrupted_run(tmp_path, monkeypatch, name, optimizer):
    # AdamW: its moments, step counts and betas (a tuple, JSON in the checkpoint) come back
    overrides = ("optim.epochs=3", "train.checkpoint_every_s=0", f"optim.optimizer={optimizer}")
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
    cfg = tiny_config(tmp_path, "optim.epochs=3", "train.checkpoint_every_s=0")
    t = make_trainer(cfg)
    original = type(t.method).forward
    calls = {"n": 0}

    def sometimes_nan(self, views):
        loss, logs = original(self, views)
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
    with pytest.raises(RunConflict, match="another out_dir"):
        make_trainer(tiny_config(tmp_path, "optim.epochs=3"), "byol", stage="a").fit()


def test_metrics_log_written(tmp_path):
    cfg, data = tiny_config(tmp_path, "train.knn_every=1"), tiny_data()
    torch.manual_seed(cfg.seed)
    monitors = [knn_monitor(data, cfg.probe.knn_k)]
    Trainer(build_method(cfg, "simclr"), data, cfg, cfg.optim, tmp_path, CPU, "s", monitors).fit()
    text = (tmp_path / "metrics.jsonl").read_text()
    assert '"kind": "epoch"' in text and "knn_val_acc" in text
    assert list((tmp_path / "tb").iterdir())


@pytest.mark.parametrize("name", ["simclr", "sdclr"])
def test_backbone_loads_from_training_checkpoint(tmp_path, name):
    from fassl.runs.stage import load_backbone

    t = make_trainer(tiny_config(tmp_path), name)
    t.fit()
    backbone, meta = load_backbone(tmp_path / LAST)
    assert meta["method"] == name
    for k, v in backbone.state_dict().items():
        own = {kk.replace(".dense.", "."): vv for kk, vv in t.method.backbone.state_dict().items()}
        assert torch.equal(v, own[k]), k


@pytest.mark.parametrize(("every_s", "saved"), [("0", [0, 1, 2]), ("3600", [2])])
def test_checkpoints_by_wall_clock(tmp_path, monkeypatch, every_s, saved):
    cfg = tiny_config(tmp_path, "optim.epochs=3", f"train.checkpoint_every_s={every_s}")
    epochs: list[int] = []
    original_save = Trainer.save

    def record(self, epoch):
        epochs.append(epoch)
        original_save(self, epoch)

    monkeypatch.setattr(Trainer, "save", record)
    make_trainer(cfg).fit()
    assert epochs == saved  # an hour never passes here: only the final checkpoint
    assert load_checkpoint(tmp_path / LAST)[1]["epoch"] == 2


def test_device_values_read_only_every_log_every_steps(tmp_path, monkeypatch):
    # 42 images / batch 8 = 5 steps per epoch; global steps 0-9. With log_every=4 the
    # loop reads at steps 0, 4 (epoch end), 8 and 9 (epoch end): 4 reads, not 10.
    import fassl.train.loop as loop

    reads = []
    original = loop.read_scalars
    monkeypatch.setattr(loop, "read_scalars", lambda v: reads.append(len(v)) or original(v))
    make_trainer(tiny_config(tmp_path, "train.log_every=4")).fit()
    assert len(reads) == 4


def test_nan_is_caught_within_log_every_steps(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, "optim.epochs=3", "train.log_every=3")
    t = make_trainer(cfg)
    original = type(t.method).forward
    calls = {"n": 0}

    def nan_at_step_7(self, views):  # global step 6: epoch 2, step 2
        loss, logs = original(self, views)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 7 else loss), logs

    monkeypatch.setattr(type(t.method), "forward", nan_at_step_7)
    with pytest.raises(NonFiniteLoss, match="at epoch 2, step 2; no checkpoint was written yet"):
        t.fit()
    assert calls["n"] == 7  # global step 6 is a log step (6 % 3 == 0): caught at once


def test_interrupt_says_whether_the_rerun_resumes_or_starts_over(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, "optim.epochs=3", "train.checkpoint_every_s=0")
    method_class = type(make_trainer(cfg).method)
    original = method_class.forward

    def interrupted_at_call(n: int) -> None:
        """Ctrl-C in the n-th forward of a fresh trainer (5 steps an epoch)."""
        t, calls = make_trainer(cfg), []

        def forward(self, views):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return original(self, views)

        monkeypatch.setattr(method_class, "forward", forward)
        t.fit()

    starts_over = "no checkpoint was written yet, so the same command starts this stage over"
    with pytest.raises(Interrupted, match=starts_over):
        interrupted_at_call(2)  # epoch 1: nothing saved
    resumes = r"\(after epoch 1\) is intact and the same command resumes from it"
    with pytest.raises(Interrupted, match=resumes):
        interrupted_at_call(7)  # epoch 2, after epoch 1's save


def test_embed_is_memoised_per_optimizer_step(tmp_path):
    t = make_trainer(tiny_config(tmp_path))
    calls = []

    def feature(x):
        calls.append(x.shape[0])
        return t.method.backbone(x)

    a = t.embed(feature)
    assert t.embed(feature) is a and len(calls) == 1  # 42 images: one batch
    assert t.embed(t.method.backbone) is not a  # another function: its own extraction
    t.train_step(torch.arange(8), 0)
    b = t.embed(feature)
    assert len(calls) == 2 and not torch.equal(a, b)  # the weights moved
    with torch.no_grad():
        direct = t.method.eval().backbone((t.images.float() / 255 - 0.5) / 0.25).flatten(1)
    assert torch.allclose(b, direct, atol=1e-5)


def test_knn_monitor_extracts_once_per_step(tmp_path, monkeypatch):
    import fassl.eval.knn as knn

    data = tiny_data()
    t = make_trainer(tiny_config(tmp_path), data=data)
    extracted = []
    original = knn.extract_features
    monkeypatch.setattr(
        knn,
        "extract_features",
        lambda net, images, *a: extracted.append(len(images)) or original(net, images, *a),
    )
    monitor = knn_monitor(data, 5)
    first = monitor(t)
    assert monitor(t) == first and extracted == [72, 12]  # bank (3 x 24 pool images) and val, once
    t.train_step(torch.arange(8), 0)
    monitor(t)
    assert extracted == [72, 12, 72, 12]


class LazyImages:
    """A tensor-like image collection that is not a tensor (a streaming decoder)."""

    def __init__(self, images: torch.Tensor) -> None:
        self._images = images
        self.shape = images.shape
        self.dtype = images.dtype

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        assert isinstance(index, torch.Tensor) and index.device.type == "cpu"
        return self._images[index].clone()

    def batches(self, index_batches):
        self.batched = getattr(self, "batched", 0) + 1
        for index in index_batches:  # image index tensors, or slices (in order: embedding)
            yield self._images[index].clone() if isinstance(index, slice) else self[index]


def test_lazy_images_train_like_a_tensor(tmp_path):
    eager = make_trainer(tiny_config(tmp_path / "a"))
    eager.fit()
    data = tiny_data()
    data.pretrain.images = LazyImages(data.pretrain.images)  # type: ignore[assignment]
    lazy = make_trainer(tiny_config(tmp_path / "b"), data=data)
    assert lazy.images is data.pretrain.images  # not moved or copied whole
    lazy.fit()
    for k, v in eager.method.state_dict().items():
        assert torch.equal(v, lazy.method.state_dict()[k]), k


def test_lazy_images_embed_through_their_read_ahead(tmp_path):
    """A stage-2 bank over a lazy set reads it chunk by chunk through ``batches`` (the
    store decodes ahead in its workers) and equals the bank of the same images held."""
    eager = make_trainer(tiny_config(tmp_path / "a"))
    data = tiny_data()
    lazy_images = LazyImages(data.pretrain.images)
    data.pretrain.images = lazy_images  # type: ignore[assignment]
    lazy = make_trainer(tiny_config(tmp_path / "b"), data=data)
    lazy.method.load_state_dict(eager.method.state_dict())
    bank = lazy.embed(lazy.method.backbone)
    assert lazy_images.batched == 1
    assert torch.equal(bank, eager.embed(eager.method.backbone))


def test_byol_checkpoint_of_the_previous_layout_resumes(tmp_path, monkeypatch):
    # BYOL's EMA network was saved as ``target.*`` before BYOL and stage 2 shared one
    # momentum-teacher class (``teacher.*``); such a checkpoint must still resume exactly.
    from fassl.train.checkpoint import save_checkpoint

    overrides = ("optim.epochs=2", "train.checkpoint_every_s=0")
    full = make_trainer(tiny_config(tmp_path / "full", *overrides), "byol")
    full.fit()
    cfg = tiny_config(tmp_path / "old", *overrides)
    original_save = Trainer.save

    def save_then_die(self, epoch):
        original_save(self, epoch)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(cfg, "byol").fit()
    monkeypatch.setattr(Trainer, "save", original_save)
    tensors, meta = load_checkpoint(tmp_path / "old" / LAST)
    old = {k.replace("model/teacher.", "model/target."): v for k, v in tensors.items()}
    assert any(k.startswith("model/target.") for k in old)
    save_checkpoint(tmp_path / "old" / LAST, old, meta)

    resumed = make_trainer(cfg, "byol")
    resumed.fit()
    assert resumed.start_epoch == 1
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
