"""The supervised reference: labels handed over by the loop, its loss, unlabeled data."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from fassl.compare.arms import baseline_epochs, run_config
from fassl.errors import ConfigError
from fassl.features import normalize_images
from fassl.methods import build_method
from fassl.methods.base import training_labels
from fassl.runtime import Runtime
from fassl.train.loop import Trainer
from tests.helpers import tiny_config, tiny_data

# The training loop end to end: `make test` runs these again on the AVX2 kernels (Makefile).
pytestmark = pytest.mark.trains


def clean_loss(method, data) -> float:
    """Cross-entropy of the classifier on the un-augmented pre-training images."""
    x = normalize_images(data.pretrain.images, data.mean, data.std)
    method.eval()
    with torch.no_grad():
        logits = method.classifier(method.encoder.backbone(x))
    method.train()
    return float(F.cross_entropy(logits, data.pretrain.labels))


def test_loss_is_the_mean_of_both_views_cross_entropies(tmp_path):
    torch.manual_seed(0)
    data = tiny_data()
    method = build_method(tiny_config(tmp_path), "supervised")
    labels = training_labels(method, data)
    method.attach_data(data)
    assert labels is not None and method.classifier.out_features == 3
    g = torch.Generator().manual_seed(1)
    v1, v2 = (torch.randn(6, 3, 16, 16, generator=g) for _ in range(2))
    y = labels[[0, 1, 30, 31, 40, 41]]  # classes 0, 0, 1, 1, 2, 2
    method.eval()  # BatchNorm with running statistics: one batch of 12 == two of 6
    loss, logs = method([v1, v2], y)
    per_view = [F.cross_entropy(method.classifier(method.encoder.backbone(v)), y) for v in (v1, v2)]
    assert torch.allclose(loss, (per_view[0] + per_view[1]) / 2, atol=1e-6)
    assert 0.0 <= float(logs["train_acc"]) <= 1.0
    with pytest.raises(ValueError, match="labels"):
        method([v1, v2])


def test_trainer_hands_over_labels_and_the_loss_decreases(tmp_path):
    torch.manual_seed(0)
    data = tiny_data()
    cfg = tiny_config(tmp_path, "optim.epochs=6", "optim.lr=0.1", "optim.warmup_epochs=0")
    method = build_method(cfg, "supervised")
    trainer = Trainer(method, data, cfg, cfg.optim, tmp_path, Runtime.cpu(), "supervised")
    before = clean_loss(method, data)
    # near chance before training: the classifier starts with small random weights
    assert abs(before - math.log(3)) < 0.5
    trainer.fit()
    after = clean_loss(method, data)
    assert after < 0.5 * before
    # the projection head is unused and untouched
    assert not any(p.requires_grad for p in method.encoder.projector.parameters())


def test_unlabeled_data_is_refused(tmp_path):
    cfg = tiny_config(tmp_path)
    unlabeled = dataclasses.replace(tiny_data(), labeled=False)
    method = build_method(cfg, "supervised")
    with pytest.raises(ConfigError, match="has none"):
        Trainer(method, unlabeled, cfg, cfg.optim, tmp_path, Runtime.cpu(), "supervised")
    data = tiny_data()
    data.pretrain.labels[:] = -1  # labels unknown
    with pytest.raises(ConfigError, match="has none"):
        training_labels(build_method(cfg, "supervised"), data)
    # every other method sees the views only
    assert training_labels(build_method(cfg, "simclr"), tiny_data()) is None


def test_compare_trains_it_at_the_baselines_equal_compute(tmp_path):
    cfg = tiny_config(tmp_path, "compare.methods=[fassl,supervised]")
    c = run_config(cfg, "supervised", 1, tmp_path)
    assert c.method == "supervised" and c.optim.epochs == baseline_epochs(cfg)
    assert c.out_dir == str(tmp_path / "supervised" / "seed1")
