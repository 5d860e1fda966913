"""GH, Geometric Harmonization: the targets, the Sinkhorn under a prior, the loss, the
momentum scores and the schedule by hand; the same functions against GH's own code on
identical inputs; the two methods through the training loop, in one and two processes.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from scipy import linalg
from torch import nn

from fassl.config import load_config
from fassl.errors import ConfigError
from fassl.losses import (
    gh_loss,
    gh_scores,
    gh_sinkhorn,
    simplex_etf,
    simplex_targets,
    target_prior,
)
from fassl.methods import build_method
from fassl.methods.gh import (
    GHSettings,
    GHSimCLR,
    gh_epoch,
    momentum_score_update,
    resolve_targets,
)
from fassl.models import Encoder
from fassl.names import LAST
from fassl.runtime import Runtime
from fassl.train.checkpoint import load_checkpoint
from fassl.train.loop import Trainer
from tests.helpers import tiny_config, tiny_data

GH = "MediaBrain-SJTU/Geometric-Harmonization @ 868a836"
CPU = Runtime.cpu()


# ------------------------------------------------------------- vendored (GH's code)


# GH utils.py @ 868a836: sinkhorn. One change, marked: .cuda() -> the scores' device.
@torch.no_grad()
def ref_sinkhorn(out, l, sinkhorn_iterations, stat=None):  # noqa: E741 (verbatim)
    Q = torch.exp(out / l).t()

    N = Q.shape[1]
    K = Q.shape[0]

    r = (torch.ones((K, 1)) / K).to(out.device)  # was .cuda()
    c = (torch.ones((N, 1)) / N).to(out.device)  # was .cuda()
    if stat is None:
        inv_K = 1.0 / K
    else:
        inv_K = stat.clone().detach().reshape(K, 1).float()
        inv_K = inv_K / torch.sum(inv_K)
    inv_N = 1.0 / N

    for _ in range(sinkhorn_iterations):
        r = inv_K / (Q @ c)
        c = inv_N / (Q.T @ r)

    Q = r * Q * c.t()
    Q = Q.t()

    Q *= N

    return Q


# GH utils.py @ 868a836: GHLoss (sinkhorn -> ref_sinkhorn above).
class RefGHLoss(nn.Module):
    def __init__(self, l, sinkhorn_iterations):  # noqa: E741 (verbatim)
        super().__init__()
        self.l = l
        self.sinkhorn_iterations = sinkhorn_iterations

    def loss(self, x, y, stat):
        gamma = 0.1
        q_x = ref_sinkhorn(x, self.l, self.sinkhorn_iterations, stat)
        q_y = ref_sinkhorn(y, self.l, self.sinkhorn_iterations, stat)
        return -torch.mean(torch.sum(q_x * F.log_softmax(y / gamma, dim=1), dim=1)) - torch.mean(
            torch.sum(q_y * F.log_softmax(x / gamma, dim=1), dim=1)
        )

    def forward(self, c1, c2, stat):
        loss = self.loss(c1, c2, stat)

        return loss


# GH target/gen_target.py (added after 868a836, which ships only its output
# 100_128_target.npy). One change, marked: its assert has a trailing comma and no
# message, a syntax error; the message is added.
def ref_simplex_equiangular_tight_frame(k, d):
    assert k <= d + 1, "k <= d + 1"  # was: assert k <= d + 1,
    A = np.random.randn(k, d)
    U, _ = linalg.polar(A)
    M = np.sqrt(k / (k - 1)) * (np.eye(k) - np.ones(k) / k) @ U
    return M


# GH train_cifar.py @ 868a836, inside the step loop: the momentum scores (logit of view
# 1, the per-image loop; epoch 0 adds to a zeroed buffer as the reference's torch.empty
# is meant to be) and the prior pi (the refresh epochs' lines).
def ref_momentum(logit_momentum, index, logit, epoch, beta):
    for count in range(logit.shape[0]):
        if epoch == 0:
            logit_momentum[index[count]] += logit[count].clone()
        else:
            logit_momentum[index[count]] = (
                beta * logit_momentum[index[count]] + (1.0 - beta) * logit[count].clone()
            )


def ref_pi(logit_momentum, target_dim):
    _, target_preds = torch.max(logit_momentum, 1)
    idxsPerClass = [
        np.where(np.array(target_preds.detach().cpu()) == idx)[0] for idx in range(target_dim)
    ]
    idxsNumPerClass = np.array([len(idxs) for idxs in idxsPerClass])
    return torch.tensor(idxsNumPerClass / np.sum(idxsNumPerClass))


def close(t: torch.Tensor, want: list, atol: float = 1e-12) -> None:
    torch.testing.assert_close(t, torch.tensor(want, dtype=t.dtype), rtol=0, atol=atol)


def unit_scores(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, k, generator=g), dim=1)


# ------------------------------------------------------------------- by hand


def test_scores_are_the_normalised_target_products() -> None:
    z = torch.tensor([[3.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    s = gh_scores(z, targets)
    # z T^T = [[3, 0, -3], [1, 1, -1]], each row divided by its norm
    r3 = 1 / math.sqrt(3)
    want = [[1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)], [r3, r3, -r3]]
    close(s, want)
    close(gh_scores(5 * z, targets), want)  # z's norm does not matter


# scores log([[1, 3], [2, 2]]), epsilon 1: Q^T = [[1, 3], [2, 2]]; one round from
# c = 1/2 by hand (docstring of gh_sinkhorn): r = pi / (Q c), c = (1/2) / (Q^T r)
SCORES = torch.log(torch.tensor([[1.0, 3.0], [2.0, 2.0]], dtype=torch.float64))


def test_sinkhorn_one_round_by_hand_uniform_prior() -> None:
    # Q c = [1.5, 2.5] -> r = [1/3, 1/5]; Q^T r = [14/15, 16/15] -> c = [15/28, 15/32]
    codes = gh_sinkhorn(SCORES, torch.tensor([0.5, 0.5]), 1.0, 1)
    want = [[5 / 14, 9 / 14], [5 / 8, 3 / 8]]
    assert codes.dtype == torch.float64
    close(codes, want)


def test_sinkhorn_one_round_by_hand_skewed_prior_is_normalised() -> None:
    # pi = [1, 3] / 4: r = [1/6, 3/10]; Q^T r = [16/15, 14/15] -> c = [15/32, 15/28]
    codes = gh_sinkhorn(SCORES, torch.tensor([1.0, 3.0]), 1.0, 1)
    want = [[5 / 32, 27 / 32], [5 / 14, 9 / 14]]
    close(codes, want)


def test_sinkhorn_rows_sum_to_one_and_columns_follow_the_prior() -> None:
    scores = unit_scores(64, 5, seed=0).double()
    prior = torch.tensor([0.4, 0.3, 0.2, 0.1, 0.0])
    codes = gh_sinkhorn(scores, prior, 0.05, 300)
    assert codes.sum(dim=1).tolist() == pytest.approx([1.0] * 64, abs=1e-12)
    assert (codes.sum(dim=0) / 64).tolist() == pytest.approx(prior.tolist(), abs=1e-6)
    assert bool((codes[:, 4] == 0).all())  # a target with prior 0 gets nothing


def test_sinkhorn_refuses_zero_rounds_and_a_mis_sized_prior() -> None:
    with pytest.raises(ValueError, match="iterations"):
        gh_sinkhorn(SCORES, torch.ones(2), 1.0, 0)
    with pytest.raises(ValueError, match="prior"):
        gh_sinkhorn(SCORES, torch.ones(3), 1.0, 1)


def test_loss_by_hand() -> None:
    # both views SCORES: q = the one-round codes above, softmax(SCORES) = [1/4, 3/4], [1/2, 1/2]
    q = [[5 / 14, 9 / 14], [5 / 8, 3 / 8]]
    logp = [[math.log(1 / 4), math.log(3 / 4)], [math.log(1 / 2), math.log(1 / 2)]]
    one_way = -sum(q[i][k] * logp[i][k] for i in range(2) for k in range(2)) / 2
    loss = gh_loss(SCORES, SCORES, torch.tensor([0.5, 0.5]), 1.0, 1.0, 1)
    assert float(loss) == pytest.approx(2 * one_way, abs=1e-12)


def test_loss_gradient_flows_through_the_softmax_not_the_codes() -> None:
    s1 = unit_scores(6, 4, seed=1).double().requires_grad_()
    s2 = unit_scores(6, 4, seed=2).double()
    prior, gamma = torch.tensor([0.1, 0.2, 0.3, 0.4]), 0.1
    gh_loss(s1, s2, prior, gamma, 0.05, 50).backward()
    q2 = gh_sinkhorn(s2, prior, 0.05, 50)
    # d/ds1 of -mean_i sum_k q2_ik log softmax(s1_i / gamma)_k, rows of q2 summing to 1
    want = (torch.softmax(s1.detach() / gamma, dim=1) - q2) / (gamma * 6)
    assert s1.grad is not None
    torch.testing.assert_close(s1.grad, want, rtol=1e-10, atol=1e-12)


def test_simplex_targets_are_unit_equiangular_and_centred() -> None:
    for k, d in ((2, 2), (8, 8), (10, 64), (100, 128)):
        m = simplex_targets(k, d, seed=3)
        gram = m @ m.T
        want = torch.full((k, k), -1.0 / (k - 1), dtype=torch.float64)
        want.fill_diagonal_(1.0)
        torch.testing.assert_close(gram, want, rtol=0, atol=1e-12)
        torch.testing.assert_close(
            m.sum(dim=0), torch.zeros(d, dtype=torch.float64), atol=1e-12, rtol=0
        )
    assert torch.equal(simplex_targets(10, 16, 0), simplex_targets(10, 16, 0))  # seeded
    assert not torch.equal(simplex_targets(10, 16, 0), simplex_targets(10, 16, 1))
    with pytest.raises(ValueError, match="K <= d"):
        simplex_etf(torch.randn(9, 8, dtype=torch.float64))


def test_target_prior_counts_each_seen_images_best_target() -> None:
    momentum = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0], [0.0, 0.0, 1.0]])
    seen = torch.tensor([True, True, True, False])
    assert target_prior(momentum, seen).tolist() == pytest.approx([2 / 3, 1 / 3, 0.0])
    uniform = target_prior(momentum, torch.zeros(4, dtype=torch.bool))
    assert uniform.tolist() == pytest.approx([1 / 3] * 3)


def test_momentum_scores_first_set_then_average() -> None:
    momentum = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    seen = torch.tensor([False, True, False])
    scores = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    new_m, new_seen = momentum_score_update(momentum, seen, torch.tensor([0, 1]), scores, 0.9)
    close(new_m, [[0.6, 0.8], [0.9, 0.1], [0.0, 0.0]], atol=1e-7)
    assert new_seen.tolist() == [True, True, False]
    assert momentum[0].tolist() == [0.0, 0.0]  # the input is not modified


def test_schedule_follows_the_reference_at_its_length() -> None:
    s = GHSettings()  # 1000 epochs: warm-up 500, ramp 10, refresh every 20
    plan = {e: gh_epoch(s, e, 1000) for e in (19, 498, 499, 500, 504, 509, 510, 519, 999)}
    assert not plan[499].active and plan[499].beta == 0.9 and plan[499].refresh
    assert not plan[19].refresh and not plan[498].refresh  # before the warm-up ends
    assert plan[500].active and plan[500].beta == 0.999
    assert plan[500].weight == pytest.approx(0.1)  # (e + 1 - 500) / 10
    assert plan[504].weight == pytest.approx(0.5) and plan[509].weight == 1.0
    assert plan[519].refresh and plan[999].refresh and not plan[510].refresh
    # a 100-epoch run: the same shares, whole epochs
    short = [gh_epoch(s, e, 100) for e in range(100)]
    assert next(e for e, p in enumerate(short) if p.active) == 50
    assert short[50].weight == 1.0  # a ramp of one epoch
    assert [e for e, p in enumerate(short) if p.refresh][:3] == [49, 51, 53]
    assert gh_epoch(GHSettings(warmup=0.0), 0, 10).active  # no warm-up: GH from the start


def test_targets_resolve_to_the_reference_k_within_the_projection() -> None:
    assert resolve_targets(0, 128) == 100 and resolve_targets(0, 64) == 64
    assert resolve_targets(32, 64) == 32
    with pytest.raises(ConfigError, match=r"gh\.targets.*proj_dim=64"):
        resolve_targets(65, 64)
    with pytest.raises(ConfigError, match=r"gh\.targets"):
        resolve_targets(1, 64)


def test_gh_keys_are_checked_and_named() -> None:
    with pytest.raises(ConfigError, match=r"gh\.epsilon"):
        load_config(None, ["gh.epsilon=0"])
    with pytest.raises(ConfigError, match=r"gh\.warmup"):
        load_config(None, ["gh.warmup=1.0"])
    cfg = load_config(None, ["method=sdclr_gh", "gh.refresh=0.1"])
    assert cfg.gh.refresh == 0.1 and cfg.gh.iterations == 300


def test_too_many_targets_for_the_projection_is_a_config_error(tmp_path) -> None:
    cfg = tiny_config(tmp_path, "gh.targets=9")  # model.proj_dim=8
    with pytest.raises(ConfigError, match=r"gh\.targets"):
        build_method(cfg, "simclr_gh")


# ------------------------------------------------------- against GH's own code


def test_sinkhorn_equals_the_reference() -> None:
    scores = unit_scores(32, 10, seed=4)
    prior = torch.tensor(
        [0.3, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.0], dtype=torch.float64
    )
    # float32 as the reference runs (its r and c are float32: float64 scores fail there)
    assert torch.equal(
        gh_sinkhorn(scores, prior, 0.05, 300), ref_sinkhorn(scores, 0.05, 300, prior)
    )
    # the project always passes a prior (uniform before the first estimate); GH's
    # stat=None divides by a Python 1/K instead, equal up to rounding
    uniform = torch.full((10,), 0.1)
    ours = gh_sinkhorn(scores, uniform, 0.05, 300)
    assert torch.equal(ours, ref_sinkhorn(scores, 0.05, 300, uniform))
    torch.testing.assert_close(ours, ref_sinkhorn(scores, 0.05, 300), rtol=1e-5, atol=1e-7)


def test_loss_equals_the_reference_in_value_and_gradient() -> None:
    z1 = torch.randn(16, 8, generator=torch.Generator().manual_seed(5))
    z2 = torch.randn(16, 8, generator=torch.Generator().manual_seed(6))
    targets = simplex_targets(6, 8, seed=0).float()
    prior = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.1, 0.0], dtype=torch.float64)

    a1, a2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    ours = gh_loss(gh_scores(a1, targets), gh_scores(a2, targets), prior, 0.1, 0.05, 300)
    ours.backward()

    b1, b2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    t1 = F.normalize(b1.mm(targets.t()), dim=1)  # train_cifar.py's scores
    t2 = F.normalize(b2.mm(targets.t()), dim=1)
    theirs = RefGHLoss(0.05, 300)(t1, t2, prior)
    theirs.backward()

    assert torch.equal(ours, theirs)
    assert a1.grad is not None and b1.grad is not None
    assert torch.equal(a1.grad, b1.grad) and torch.equal(a2.grad, b2.grad)  # type: ignore[arg-type]


def test_targets_equal_gen_target_on_the_same_draw() -> None:
    for k, d in ((100, 128), (10, 16)):
        np.random.seed(7)
        theirs = ref_simplex_equiangular_tight_frame(k, d)
        np.random.seed(7)
        gaussian = torch.from_numpy(np.random.randn(k, d))
        torch.testing.assert_close(
            simplex_etf(gaussian), torch.from_numpy(theirs), rtol=0, atol=1e-12
        )


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # ref_pi
def test_momentum_and_prior_equal_the_reference() -> None:
    n, k = 12, 5
    momentum, seen = torch.zeros(n, k), torch.zeros(n, dtype=torch.bool)
    ref = torch.zeros(n, k)
    g = torch.Generator().manual_seed(8)
    for epoch, beta in ((0, 0.9), (1, 0.9), (2, 0.999)):
        order = torch.randperm(n, generator=g)
        for index in order.split(4):
            logit = unit_scores(4, k, seed=int(index[0]) + 10 * epoch)
            momentum, seen = momentum_score_update(momentum, seen, index, logit, beta)
            ref_momentum(ref, index, logit, epoch, beta)
        torch.testing.assert_close(momentum, ref, rtol=0, atol=1e-7)
        pi = ref_pi(ref, k)
        assert target_prior(momentum, seen).tolist() == pytest.approx(pi.tolist(), abs=1e-7)


# ------------------------------------------------------------------ the methods


def train(cfg, name: str) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(build_method(cfg, name), tiny_data(), cfg, cfg.optim, cfg.out_dir, CPU, name)
    trainer.fit()
    return trainer


@pytest.mark.trains
@pytest.mark.slow
@pytest.mark.parametrize("name", ["simclr_gh", "sdclr_gh"])
def test_gh_trains_after_its_warmup_and_saves_its_state(tmp_path, name) -> None:
    cfg = tiny_config(tmp_path, "optim.epochs=4", "train.checkpoint_every_s=0")
    method = train(cfg, name).method
    k, n = 8, len(tiny_data().pretrain)  # K: model.proj_dim=8 < 100
    assert method.targets.shape == (k, 8)
    torch.testing.assert_close(method.targets, simplex_targets(k, 8, 0).float())
    assert method.momentum.shape == (n, k) and bool(method.seen.all())
    assert not torch.allclose(method.prior, torch.full((k,), 1 / k))  # estimated
    torch.testing.assert_close(method.prior, target_prior(method.momentum, method.seen))
    rows = [r for r in _steps(tmp_path)]
    assert all(r["loss_gh"] == 0.0 for r in rows if r["step"] < 10)  # epochs 1-2: warm-up
    late = [r for r in rows if r["step"] >= 10]
    assert late and all(r["loss_gh"] > 0 and r["gh_weight"] == 1.0 for r in late)
    assert all(r["loss"] == pytest.approx(r["loss_cl"] + r["loss_gh"], rel=1e-5) for r in late)
    tensors, _ = load_checkpoint(Path(cfg.out_dir) / LAST)
    for key in ("targets", "prior", "momentum", "seen"):
        assert torch.equal(tensors[f"model/{key}"], getattr(method, key)), key


def _steps(run_dir: Path) -> list[dict]:
    import json

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "step"]


@pytest.mark.trains
@pytest.mark.slow
def test_gh_adds_to_simclr_and_nothing_else(tmp_path) -> None:
    """At gh.weight=0 simclr_gh trains SimCLR's weights exactly; at 1 GH moves them."""
    common = ("optim.epochs=2", "train.checkpoint_every_s=0")
    simclr = train(tiny_config(tmp_path / "a", *common), "simclr").method
    off = train(tiny_config(tmp_path / "b", *common, "gh.weight=0"), "simclr_gh").method
    on = train(tiny_config(tmp_path / "c", *common), "simclr_gh").method
    for key, value in simclr.encoder.state_dict().items():
        assert torch.equal(value, off.encoder.state_dict()[key]), key
    moved = [
        k
        for k, v in simclr.encoder.state_dict().items()
        if not torch.equal(v, on.encoder.state_dict()[k])
    ]
    assert moved


# ------------------------------------------------------------ two processes


IDENTITY_AUG = (
    "augment.crop_scale_min=1.0",
    "augment.flip_p=0.0",
    "augment.jitter_p=0.0",
    "augment.grayscale_p=0.0",
)


def bn_free_gh() -> GHSimCLR:
    """SimCLR + GH on a linear encoder (BatchNorm statistics are per process): GH on from
    the second of three epochs, pi re-estimated every epoch."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 12))
    backbone.out_dim = 12  # type: ignore[attr-defined]
    method = GHSimCLR(Encoder(backbone, nn.Linear(12, 6)), temperature=0.5)
    method.init_gh(GHSettings(warmup=0.34, ramp=0.0, refresh=0.1), dim=6)
    return method


def train_ddp(run_dir: str) -> dict[str, torch.Tensor]:
    cfg = tiny_config(run_dir, *IDENTITY_AUG, "optim.epochs=3", "train.memory_format=contiguous")
    method = bn_free_gh()
    Trainer(method, tiny_data(), cfg, cfg.optim, run_dir, CPU, "ddp").fit()
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


def worker(rank: int, port: int, run_dir: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    state = train_ddp(run_dir)
    torch.save(state, f"{out}.{rank}")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.trains
@pytest.mark.slow
def test_two_processes_match_one(tmp_path) -> None:
    single = train_ddp(str(tmp_path / "single"))
    out = tmp_path / "ddp.pt"
    mp.spawn(worker, args=(free_port(), str(tmp_path / "ddp"), str(out)), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    assert bool(single["seen"].all())
    assert not torch.allclose(single["prior"], torch.full((6,), 1 / 6))
    for k, v in single.items():
        for state in ranks:  # every rank holds the whole momentum and the same prior
            assert torch.allclose(v.float(), state[k].float(), atol=1e-5), k


def test_gh_arms_are_measured_against_their_base_methods() -> None:
    from fassl.registry import ARMS, SELF_SUPERVISED

    assert ARMS["simclr_gh"].method == "simclr_gh" and ARMS["simclr_gh"].bases == ("simclr",)
    assert ARMS["sdclr_gh"].method == "sdclr_gh" and ARMS["sdclr_gh"].bases == ("sdclr",)
    assert {"simclr_gh", "sdclr_gh"} <= set(SELF_SUPERVISED)
