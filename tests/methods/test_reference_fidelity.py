"""Each mechanism against its reference code, on identical inputs.

The few reference functions compared against are vendored below, each with its
repository, file and commit; only what the comparison needs is kept (CUDA calls and
logging removed, nothing else changed in the arithmetic). Where the project differs on
purpose (docs/method.md), the test says so and checks what must still agree.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from fassl.augment import boost as B
from fassl.methods.bcl import boost_strength, momentum_loss_update
from fassl.methods.temperature import TemperatureSchedule
from fassl.models.heads import bn_head, head_of_state, mlp_head
from fassl.models.pruning import global_magnitude_masks, pruned_count

BCL = "MediaBrain-SJTU/BCL @ a2342f86fa3e2f8c5efc5b98334126133b0b360b"
SDCLR = "VITA-Group/SDCLR @ f1490fce26e6bb67d2c21b450db5a6e3184e6bc3"
TS = "Annusha/temperature_schedules @ 3ac1db63ffeb000d917c596be51d6120c19aa633"


# ------------------------------------------------------------------ vendored (BCL)


# BCL data/randaug.py: RandAugment_prob (augment_list replaced by the test's operations)
class RandAugment_prob:
    def __init__(self, n, m, p, augment_list):
        self.n = n
        self.m = m  # [0, 30]
        self.p = p
        self.augment_list = augment_list

    def __call__(self, img):
        ops = random.choices(self.augment_list, k=self.n)
        for op, minval, maxval in ops:
            if random.uniform(0, 1) < self.p:
                val = (float(self.m) / 30) * float(maxval - minval) + minval
                img = op(img, val)
        return img


# BCL data/memoboosted_cifar100.py: memoboosted_CIFAR100.__getitem__, the boost part
# (rand_strength 30, BCL's train.py default); both views share one RandAugment_prob.
# One change, marked: numpy 2 needs the [0].
def bcl_two_views(img, momentum_weight, rand_k, augment_list, rand_strength=30):
    if rand_k == 1:
        min_strength = 10  # training stability
        m = min_strength + (rand_strength - min_strength) * momentum_weight
    else:
        min_strength = 5  # training stability
        # [0]: numpy 2 refuses float() of a one-element array, as RandAugment_prob takes
        m = min_strength + (rand_strength - min_strength) * momentum_weight * np.random.rand(1)[0]
    aug = RandAugment_prob(rand_k, m, 1.0 * momentum_weight, augment_list)
    return [aug(img), aug(img)]


# BCL data/memoboosted_cifar100.py: calculate_momentum_weight
def calculate_momentum_weight(momentum_loss, epoch):
    momentum_weight = (momentum_loss[epoch - 1] - torch.mean(momentum_loss[epoch - 1, :])) / (
        torch.std(momentum_loss[epoch - 1, :])
    )
    momentum_weight = (
        ((momentum_weight / torch.max(torch.abs(momentum_weight[:]))) / 2 + 1 / 2)
        .detach()
        .cpu()
        .numpy()
    )
    return momentum_weight


# BCL train.py: train(), the momentum loss of each image of a batch
def bcl_track(shadow, momentum_loss, loss, index, epoch, momentum_loss_beta):
    for count in range(len(index)):
        if epoch > 1:
            new_average = (1.0 - momentum_loss_beta) * loss[count].clone().detach() + (
                momentum_loss_beta * shadow[index[count]]
            )
        else:
            new_average = loss[count].clone().detach()
        shadow[index[count]] = new_average
        momentum_loss[epoch - 1, index[count]] = new_average
    return shadow, momentum_loss


# BCL models/simclr.py: proj_head (SDCLR's models/resnet_prune_multibn.py proj_head with
# twoLayerProj=True has the same layers, with a BatchNorm twin per branch)
class proj_head(nn.Module):
    def __init__(self, ch, output_cnt=None):
        super().__init__()
        self.in_features = ch
        if output_cnt is None:
            output_cnt = ch
        self.fc1 = nn.Linear(ch, ch)
        self.bn1 = nn.BatchNorm1d(ch)
        self.fc2 = nn.Linear(ch, output_cnt, bias=False)
        self.bn2 = nn.BatchNorm1d(output_cnt)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.fc1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.fc2(x)
        x = self.bn2(x)
        return x


# ---------------------------------------------------------------- vendored (SDCLR)


# SDCLR prune/mask.py: Mask.magnitudePruning (randomPruneFraction 0), over numpy arrays
def sdclr_masks(weights, magnitudePruneFraction):
    number_of_remaining_weights = int(sum(w.size for w in weights))
    number_of_weights_to_prune_magnitude = np.ceil(
        magnitudePruneFraction * number_of_remaining_weights
    ).astype(int)
    weight_vector = np.concatenate([v.flatten() for v in weights])
    threshold = np.sort(np.abs(weight_vector))[
        min(number_of_weights_to_prune_magnitude, len(weight_vector) - 1)
    ]
    return [np.abs(w) >= threshold for w in weights]


# ------------------------------------------------------- vendored (Kukleva et al.)


# temperature_schedules train_simCLR.py: train(), the tau of an epoch (epoch from 1)
def kukleva_tau(epoch, temperature_min, temperature_max, t_max):
    min_tau, max_tau = temperature_min, temperature_max
    return min_tau + 0.5 * (max_tau - min_tau) * (
        1 + torch.cos(torch.tensor(torch.pi * epoch / t_max))
    )


# ------------------------------------------------------------------------- tests


@pytest.mark.parametrize("rand_k", [1, 2])
def test_bcl_magnitude_equals_the_reference(monkeypatch: pytest.MonkeyPatch, rand_k: int) -> None:
    """BCL's magnitude of each image (a share of the range) for the same strength and, with
    two operations, the same random draw r: equal to float precision."""
    s = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    spec = B.BoostSpec("randaugment", num_ops=rand_k)
    torch.manual_seed(3)
    ours = B.boost_magnitude(s, spec)
    torch.manual_seed(3)
    r = torch.rand(s.shape, dtype=torch.float64).tolist()  # the draw boost_magnitude made
    for weight, draw, got in zip(s.tolist(), r, ours.tolist(), strict=True):
        record: list[float] = []

        def note(img, val, record=record):
            record.append(val)
            return img

        random.seed(0)
        monkeypatch.setattr(np.random, "rand", lambda *_, draw=draw: np.array([draw]))
        bcl_two_views(0, max(weight, 1e-9), rand_k, [(note, 0.0, 1.0)])
        monkeypatch.undo()
        if record:  # weight ~0: the reference applies nothing (p ~ 0)
            assert got == pytest.approx(record[0], abs=1e-6), weight


def _counting_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """One operation, ``mark``, that adds 1000 + m to an image: applied k times it adds
    k (1000 + m) when every round uses the same m."""
    monkeypatch.setitem(B.OP_SETS, "randaugment", ("mark",))
    monkeypatch.setitem(B.PIXEL_OPS, "mark", lambda x, m: x + 1000 + m.view(-1, 1, 1, 1))


@pytest.mark.parametrize("rand_k", [1, 2])
@pytest.mark.parametrize("strength", [0.25, 0.5, 1.0])
def test_bcl_operations_per_view_and_share_match_the_reference(
    monkeypatch: pytest.MonkeyPatch, rand_k: int, strength: float
) -> None:
    """Over many images: the mean number of operations applied to a view and the mean share
    of the range agree with BCL's code (BCL-I 0.50 / 0.67 / 1.00 of the range at strength
    0.25 / 0.5 / 1, BCL-D 2 s operations a view at 0.27 / 0.38 / 0.58), and both views of
    an image and all its operations share one magnitude."""
    n = 20_000
    _counting_ops(monkeypatch)
    spec = B.BoostSpec("randaugment", num_ops=rand_k)
    torch.manual_seed(0)
    x = torch.zeros(n, 3, 2, 2)
    out = B.boost_two_views(torch.cat([x, x]), torch.full((n,), strength), spec)
    delta = out[:, 0, 0, 0].double()
    k = torch.round(delta / 1000)
    m = torch.where(k > 0, delta / k.clamp_min(1) - 1000, torch.nan)
    assert torch.allclose(out[:, :, 0, 0], out[:, :1, 0, 0].expand(-1, 3))
    k1, k2, m1, m2 = k[:n], k[n:], m[:n], m[n:]
    both = (k1 > 0) & (k2 > 0)
    assert torch.allclose(m1[both], m2[both], atol=1e-4)  # one magnitude, both views
    # the reference, on the same number of images
    random.seed(0)
    np.random.seed(0)
    counts, shares = [], []

    def note(img, val):
        return [*img, val]

    for _ in range(n):
        for view in bcl_two_views([], strength, rand_k, [(note, 0.0, 1.0)]):
            counts.append(len(view))
            shares.extend(float(v) for v in view)
    ref_k, ref_share = np.mean(counts), np.mean(shares)
    ours_k = torch.cat([k1, k2]).mean().item()
    ours_share = torch.cat([m1, m2])[torch.cat([k1, k2]) > 0].mean().item()
    assert ours_k == pytest.approx(rand_k * strength, abs=0.02)
    assert ours_k == pytest.approx(ref_k, abs=0.03)
    assert ours_share == pytest.approx(ref_share, abs=0.01)


def test_bcl_uniform_magnitude_is_the_named_alternative(monkeypatch: pytest.MonkeyPatch) -> None:
    """``bcl.magnitude=uniform`` keeps the weaker rule s * u, u drawn per view and op."""
    _counting_ops(monkeypatch)
    spec = B.BoostSpec("randaugment", num_ops=1, magnitude="uniform")
    assert B.boost_magnitude(torch.ones(3), spec) is None
    torch.manual_seed(0)
    n = 20_000
    x = torch.zeros(n, 3, 2, 2)
    delta = B.boost_two_views(torch.cat([x, x]), torch.ones(n), spec)[:, 0, 0, 0].double()
    assert (delta - 1000).mean().item() == pytest.approx(0.5, abs=0.01)  # mean of u


def test_bcl_momentum_and_strength_equal_the_reference() -> None:
    """Three epochs of momentum losses and the strengths BCL computes from them."""
    g = torch.Generator().manual_seed(0)
    n, epochs, beta = 40, 3, 0.97
    shadow = torch.zeros(n, dtype=torch.float64)
    history = torch.zeros(epochs, n, dtype=torch.float64)
    momentum = torch.zeros(n, dtype=torch.float64)
    seen = torch.zeros(n, dtype=torch.bool)
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=g)
        for batch in order.view(4, 10):
            loss = torch.rand(10, generator=g, dtype=torch.float64) * 5
            shadow, history = bcl_track(shadow, history, loss, batch, epoch, beta)
            momentum, seen = momentum_loss_update(momentum, seen, batch, loss, beta)
        torch.testing.assert_close(momentum, history[epoch - 1], rtol=0, atol=1e-12)
        want = torch.from_numpy(calculate_momentum_weight(history, epoch)).float()
        torch.testing.assert_close(boost_strength(momentum, seen), want, rtol=0, atol=1e-6)


def test_bcl_beta_default_is_the_references() -> None:
    from fassl.config import BCLConfig

    assert BCLConfig().beta == 0.97  # BCL train.py and train_sdclr.py: momentum_loss_beta


def test_bcl_num_ops_follow_bcl_readme(tmp_path) -> None:
    from fassl.methods import build_method
    from tests.helpers import tiny_config

    cfg = tiny_config(tmp_path)
    assert build_method(cfg, "bcl_i").boost.num_ops == 1  # --rand_k 1
    assert build_method(cfg, "bcl_d").boost.num_ops == 2  # --rand_k 2
    assert build_method(tiny_config(tmp_path, "bcl.num_ops=3"), "bcl_d").boost.num_ops == 3


def test_bn_head_equals_bcls_projection_head() -> None:
    """The default contrastive head computes what BCL's ``proj_head`` computes (train mode,
    batch statistics; and eval mode after the same updates)."""
    torch.manual_seed(0)
    ref = proj_head(32, 16)
    ours = bn_head(32, 32, 16)
    names = {"fc1": "0", "bn1": "1", "fc2": "3", "bn2": "4"}
    state = {}
    for key, value in ref.state_dict().items():
        layer, rest = key.split(".", 1)
        state[f"{names[layer]}.{rest}"] = value
    ours.load_state_dict(state)  # strict: the same parameters, biases and buffers
    x = torch.randn(64, 32)
    torch.testing.assert_close(ours(x), ref(x.clone()), rtol=0, atol=1e-6)
    ref.eval()
    ours.eval()
    torch.testing.assert_close(ours(x), ref(x.clone()), rtol=0, atol=1e-6)
    assert head_of_state({f"projector.{k}": v for k, v in ours.state_dict().items()}) == "bn"
    plain = mlp_head(32, 32, 16).state_dict()
    assert head_of_state({f"projector.{k}": v for k, v in plain.items()}) == "plain"


def test_method_heads_follow_their_references(tmp_path) -> None:
    from fassl.methods import build_method
    from tests.helpers import tiny_config

    cfg = tiny_config(tmp_path)
    for name in ("simclr", "sdclr", "bcl_i", "bcl_d"):  # BCL's and SDCLR's: an output BN
        last = build_method(cfg, name).encoder.projector[-1]
        last = getattr(last, "dense", last)  # SDCLR's is a DualNorm over the BatchNorm
        assert isinstance(last, nn.BatchNorm1d), name
    for name in ("byol", "swav"):  # BYOL's and SwAV's projectors end in a linear layer
        assert isinstance(build_method(cfg, name).encoder.projector[-1], nn.Linear), name
    plain = build_method(tiny_config(tmp_path, "model.head=plain"), "simclr")
    assert isinstance(plain.encoder.projector[-1], nn.Linear)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_sdclr_masks_equal_the_reference(ratio: float) -> None:
    """The same weights pruned by SDCLR's Mask.magnitudePruning and by the project: the
    same masks, entry for entry (random weights: no ties at the threshold)."""
    g = torch.Generator().manual_seed(int(ratio * 100))
    shapes = [(16, 3, 3, 3), (16, 16, 3, 3), (32, 16, 1, 1), (7,)]
    weights = {f"w{i}": torch.randn(*s, generator=g) for i, s in enumerate(shapes)}
    ours = global_magnitude_masks(weights, ratio)
    ref = sdclr_masks([w.numpy() for w in weights.values()], ratio)
    for (name, mask), want in zip(ours.items(), ref, strict=True):
        assert np.array_equal(mask.numpy(), want), name
    total = sum(w.numel() for w in weights.values())
    assert pruned_count(total, ratio) == min(int(np.ceil(ratio * total)), total - 1)


def test_pruned_count_is_ceil_not_round() -> None:
    assert pruned_count(37, 0.9) == 34  # 33.3 -> 34 (round: 33)
    assert pruned_count(10, 0.0) == 0
    assert pruned_count(5, 0.99) == 4  # at most total - 1: the largest weight stays


@pytest.mark.parametrize("t_max, epochs", [(200, 2000), (4, 20), (3, 9)])
def test_temperature_epoch_rule_equals_the_reference(t_max: int, epochs: int) -> None:
    """tau of every step of a run, held for its epoch, as Kukleva et al.'s train loop sets it
    (``--adj_tau cos --temperature_min 0.1 --temperature_max 1.0 --t_max T``)."""
    steps_per_epoch = 3
    schedule = TemperatureSchedule(0.2, "cosine", 0.1, 1.0, period_epochs=2 * t_max)
    total = epochs * steps_per_epoch
    for epoch in range(1, epochs + 1, max(1, epochs // 50)):
        want = float(kukleva_tau(epoch, 0.1, 1.0, t_max))
        for step in range((epoch - 1) * steps_per_epoch, epoch * steps_per_epoch):
            assert schedule.at(step, total, epochs) == pytest.approx(want, abs=1e-6), step


def test_reference_commits_are_named() -> None:
    for ref in (BCL, SDCLR, TS):
        assert len(ref.split(" @ ")[1]) == 40
