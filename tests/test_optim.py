import math

import pytest
import torch

from fassl.config import OptimConfig
from fassl.train.optim import LARS, build_optimizer, lr_at, param_groups


def test_schedule_warmup_and_cosine():
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    # halfway through the cosine part: (1 + cos(pi/2)) / 2 = 0.5
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(100, 100, 10, 2.0, min_ratio=0.1) == pytest.approx(0.2)
    mid = lr_at(32, 100, 10, 1.0)
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 22 / 90)))


def test_no_weight_decay_on_biases_and_norms():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    decay, no_decay = param_groups(net, 1e-4)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_lars_trust_ratio_on_hand_values():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # |w| = 5
    w.grad = torch.tensor([0.0, 2.0])  # |g| = 2
    opt = LARS([{"params": [w], "weight_decay": 0.0, "lars": True}], lr=1.0, eta=0.1)
    opt.step()
    # update = lr * eta * |w| / |g| * g = 0.25 * [0, 2]
    assert torch.allclose(w.detach(), torch.tensor([3.0, 3.5]))


def test_build_sgd_and_lars():
    net = torch.nn.Linear(2, 2)
    assert isinstance(build_optimizer(net, OptimConfig(optimizer="sgd")), torch.optim.SGD)
    assert isinstance(build_optimizer(net, OptimConfig(optimizer="lars")), LARS)
