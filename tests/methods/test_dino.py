"""DINO and SwAV's multi-crop: the losses on hand-computed values, then against their
reference code on identical inputs, the method through the loop, a resume and two
processes.

The reference code compared against is vendored below, each piece with its repository,
file and commit; only what the comparison needs is kept (CUDA calls and logging
removed, the lines re-wrapped, names the linter refuses renamed; nothing changed in the
arithmetic).
"""

from __future__ import annotations

import copy
import math
import os
import signal
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from fassl.augment.views import TWO_VIEWS, ViewAugment
from fassl.errors import ConfigError, Interrupted
from fassl.losses import (
    dino_loss,
    dino_targets,
    sinkhorn,
    swav_loss,
    swav_multicrop_loss,
    target_entropy,
    teacher_temperature,
    update_center,
)
from fassl.methods import EpochContext, build_method
from fassl.methods.dino import DINO, DINOHead, clip_gradients
from fassl.methods.momentum import EmaSchedule
from fassl.methods.swav import SwAV
from fassl.models import Encoder
from fassl.names import LAST
from fassl.registry import ARMS, SELF_SUPERVISED
from fassl.runtime import Runtime
from fassl.train.checkpoint import load_checkpoint
from fassl.train.loop import Trainer
from tests.helpers import tiny_config, tiny_data

DINO_REF = "facebookresearch/dino @ 7c446df5b9f45747937fb0d72314eb9f7b66930a"
SWAV_REF = "facebookresearch/swav @ 06b1b7cbaf6ba2a792300d79c7299db98b93b7f9"
# a small head, so that the tests train in seconds
SMALL_HEAD = ("dino.hidden_dim=24", "dino.bottleneck_dim=12", "dino.out_dim=20")
CPU = Runtime.cpu()
# DINO's head uses nn.utils.weight_norm, which torch now deprecates
pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")


# ------------------------------------------------------------------ vendored (DINO)


# DINO main_dino.py: DINOLoss
class DINOLoss(nn.Module):
    def __init__(
        self,
        out_dim,
        ncrops,
        warmup_teacher_temp,
        teacher_temp,
        warmup_teacher_temp_epochs,
        nepochs,
        student_temp=0.1,
        center_momentum=0.9,
    ):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        # we apply a warm up for the teacher temperature because
        # a too high temperature makes the training instable at the beginning
        self.teacher_temp_schedule = np.concatenate(
            (
                np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
                np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp,
            )
        )

    def forward(self, student_output, teacher_output, epoch):
        """
        Cross-entropy between softmax outputs of the teacher and student networks.
        """
        student_out = student_output / self.student_temp
        student_out = student_out.chunk(self.ncrops)

        # teacher centering and sharpening
        temp = self.teacher_temp_schedule[epoch]
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1)
        teacher_out = teacher_out.detach().chunk(2)

        total_loss = 0
        n_loss_terms = 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    # we skip cases where student and teacher operate on the same view
                    continue
                loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
                total_loss += loss.mean()
                n_loss_terms += 1
        total_loss /= n_loss_terms
        self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output):
        """
        Update center used for teacher output.
        """
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True)
        dist.all_reduce(batch_center)
        batch_center = batch_center / (len(teacher_output) * dist.get_world_size())

        # ema update
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


# DINO utils.py: _no_grad_trunc_normal_ (its warning dropped: never raised here)
def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0):
    def norm_cdf(x):
        # Computes standard normal cumulative distribution function
        return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0

    with torch.no_grad():
        low = norm_cdf((a - mean) / std)
        up = norm_cdf((b - mean) / std)
        tensor.uniform_(2 * low - 1, 2 * up - 1)
        tensor.erfinv_()
        tensor.mul_(std * math.sqrt(2.0))
        tensor.add_(mean)
        tensor.clamp_(min=a, max=b)
        return tensor


# DINO vision_transformer.py: DINOHead
class RefDINOHead(nn.Module):
    def __init__(
        self,
        in_dim,
        out_dim,
        use_bn=False,
        norm_last_layer=True,
        nlayers=3,
        hidden_dim=2048,
        bottleneck_dim=256,
    ):
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers = [nn.Linear(in_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.mlp(x)
        x = nn.functional.normalize(x, dim=-1, p=2)
        x = self.last_layer(x)
        return x


# DINO utils.py: MultiCropWrapper
class MultiCropWrapper(nn.Module):
    def __init__(self, backbone, head):
        super().__init__()
        # disable layers dedicated to ImageNet labels classification
        backbone.fc, backbone.head = nn.Identity(), nn.Identity()
        self.backbone = backbone
        self.head = head

    def forward(self, x):
        # convert to list
        if not isinstance(x, list):
            x = [x]
        idx_crops = torch.cumsum(
            torch.unique_consecutive(
                torch.tensor([inp.shape[-1] for inp in x]),
                return_counts=True,
            )[1],
            0,
        )
        start_idx, output = 0, torch.empty(0).to(x[0].device)
        for end_idx in idx_crops:
            _out = self.backbone(torch.cat(x[start_idx:end_idx]))
            # accumulate outputs
            output = torch.cat((output, _out))
            start_idx = end_idx
        # Run the head forward on the concatenated features.
        return self.head(output)


# DINO utils.py: cosine_scheduler, clip_gradients, cancel_gradients_last_layer
def cosine_scheduler(
    base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0
):
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)

    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (
        1 + np.cos(np.pi * iters / len(iters))
    )

    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def ref_clip_gradients(model, clip):
    norms = []
    for _name, p in model.named_parameters():
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm.item())
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def cancel_gradients_last_layer(epoch, model, freeze_last_layer):
    if epoch >= freeze_last_layer:
        return
    for n, p in model.named_parameters():
        if "last_layer" in n:
            p.grad = None


# ------------------------------------------------------------------ vendored (SwAV)


# SwAV main_swav.py: distributed_sinkhorn (args.* passed in)
@torch.no_grad()
def distributed_sinkhorn(out, epsilon, sinkhorn_iterations, world_size=1):
    Q = torch.exp(out / epsilon).t()  # Q is K-by-B for consistency with notations from our paper
    B = Q.shape[1] * world_size  # number of samples to assign
    K = Q.shape[0]  # how many prototypes

    # make the matrix sums to 1
    sum_Q = torch.sum(Q)
    dist.all_reduce(sum_Q)
    Q /= sum_Q

    for _it in range(sinkhorn_iterations):
        # normalize each row: total weight per prototype must be 1/K
        sum_of_rows = torch.sum(Q, dim=1, keepdim=True)
        dist.all_reduce(sum_of_rows)
        Q /= sum_of_rows
        Q /= K

        # normalize each column: total weight per sample must be 1/B
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B

    Q *= B  # the colomns must sum to 1 so that Q is an assignment
    return Q.t()


# SwAV main_swav.py: train(), the loss after the forward (no queue; args.* passed in)
def swav_reference_loss(output, bs, crops_for_assign, nmb_crops, temperature, epsilon, iters):
    loss = 0
    for _i, crop_id in enumerate(crops_for_assign):
        with torch.no_grad():
            out = output[bs * crop_id : bs * (crop_id + 1)].detach()
            # get assignments
            q = distributed_sinkhorn(out, epsilon, iters)[-bs:]

        # cluster assignment prediction
        subloss = 0
        for v in np.delete(np.arange(np.sum(nmb_crops)), crop_id):
            x = output[bs * v : bs * (v + 1)] / temperature
            subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss += subloss / (np.sum(nmb_crops) - 1)
    loss /= len(crops_for_assign)
    return loss


@pytest.fixture
def one_process_dist(monkeypatch: pytest.MonkeyPatch) -> None:
    """The references call torch.distributed unconditionally: one process is a world of 1."""
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, *args, **kwargs: None)
    monkeypatch.setattr(dist, "get_world_size", lambda *args, **kwargs: 1)


# ------------------------------------------------------------------ hand-computed

LN3 = math.log(3.0)


def test_dino_loss_by_hand() -> None:
    # K = 2, one image; teacher logits [0, 0] -> [1/2, 1/2], [ln 3, 0] -> [3/4, 1/4]
    teacher = [torch.tensor([[0.0, 0.0]]), torch.tensor([[LN3, 0.0]])]
    student = [torch.tensor([[0.0, 0.0]]), torch.tensor([[LN3, 0.0]]), torch.tensor([[0.0, 0.0]])]
    zero = torch.zeros(1, 2)
    # pairs (teacher, student): (0, 1), (0, 2), (1, 0), (1, 2); (0, 0) and (1, 1) skipped
    ce01 = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    want = (ce01 + 3 * math.log(2.0)) / 4
    got = dino_loss(student, teacher, zero, student_temp=1.0, teacher_temp=1.0)
    assert got.item() == pytest.approx(want, rel=1e-6)
    # centring: the centre [ln 3, 0] turns the teacher into [1/4, 3/4] and [1/2, 1/2]
    centred = dino_loss(student, teacher, torch.tensor([[LN3, 0.0]]), 1.0, 1.0)
    ce01 = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    assert centred.item() == pytest.approx((ce01 + 3 * math.log(2.0)) / 4, rel=1e-6)
    # sharpening: teacher temperature 1/2 squares the odds, [3/4, 1/4] -> [9/10, 1/10];
    # a student temperature of 1/2 does the same to the student's [ln 3, 0]
    sharp = dino_loss(student, teacher, zero, student_temp=0.5, teacher_temp=0.5)
    ce01 = -(0.5 * math.log(0.9) + 0.5 * math.log(0.1))
    assert sharp.item() == pytest.approx((ce01 + 3 * math.log(2.0)) / 4, rel=1e-6)


def test_dino_loss_reaches_the_student_only() -> None:
    s = [torch.randn(3, 4, requires_grad=True) for _ in range(3)]
    t = [torch.randn(3, 4, requires_grad=True) for _ in range(2)]
    dino_loss(s, t, torch.zeros(1, 4), 0.1, 0.04).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in s)
    assert all(v.grad is None for v in t)
    with pytest.raises(ValueError, match="at least 2 student views"):
        dino_loss(s[:1], t[:1], torch.zeros(1, 4), 0.1, 0.04)


def test_target_entropy_by_hand() -> None:
    # uniform targets: ln K of ln K; K = 2, [3/4, 1/4]: (3/4 ln 4/3 + 1/4 ln 4) / ln 2
    assert target_entropy([torch.full((3, 4), 0.25)]).item() == pytest.approx(1.0)
    q = dino_targets([torch.tensor([[LN3, 0.0]])], torch.zeros(1, 2), teacher_temp=1.0)
    torch.testing.assert_close(q[0], torch.tensor([[0.75, 0.25]]))
    want = (0.75 * math.log(4 / 3) + 0.25 * math.log(4.0)) / math.log(2.0)
    assert target_entropy(q).item() == pytest.approx(want, rel=1e-6)
    # the mean over every row of every view; a one-hot row has entropy 0
    rows = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]])]
    assert target_entropy(rows).item() == pytest.approx(0.5)


@pytest.mark.parametrize(("teacher_temp", "named"), [(100.0, True), (1e-4, False)])
def test_uniform_targets_are_named_once(tmp_path, capsys, teacher_temp, named) -> None:
    """A teacher temperature of 100 makes every target uniform (the collapse the warning
    names); 1e-4 makes them one-hot. Nothing is said before the third epoch."""
    keys = (*SMALL_HEAD, "dino.local_crops=0", f"dino.teacher_temp={teacher_temp}")
    method = build_method(tiny_config(tmp_path, *keys), "dino")
    method.train()
    for epoch in range(5):
        method.on_epoch_start(EpochContext(epoch, 5, lambda f: torch.empty(0)))
        _, logs = method(small_views(local=0, seed=epoch))
        method.on_step_end(epoch, 5)
        assert 0.0 <= logs["target_entropy"].item() <= 1.0 + 1e-6
        said = capsys.readouterr().err
        assert ("targets were uniform" in said) == (named and epoch == 3), (epoch, said)
    assert (logs["target_entropy"].item() > 0.99) == named


def test_update_center_by_hand() -> None:
    center = torch.tensor([[1.0, 1.0]])
    teacher = [torch.tensor([[0.0, 2.0], [2.0, 4.0]]), torch.tensor([[4.0, 6.0]])]
    new = update_center(center, teacher, momentum=0.9)  # the mean of the rows: [2, 4]
    torch.testing.assert_close(new, torch.tensor([[1.1, 1.3]]))
    assert torch.equal(center, torch.tensor([[1.0, 1.0]]))  # pure: the input is kept
    assert torch.equal(update_center(center, teacher, momentum=1.0), center)


@pytest.mark.parametrize(("warmup", "epochs"), [(0, 5), (1, 5), (2, 5), (30, 100), (5, 5)])
def test_teacher_temperature_is_dino_s_schedule(warmup: int, epochs: int) -> None:
    schedule = np.concatenate(
        (np.linspace(0.04, 0.07, warmup), np.ones(epochs - warmup) * 0.07)
    )  # main_dino.py's DINOLoss.teacher_temp_schedule
    ours = [teacher_temperature(e, 0.04, 0.07, warmup, epochs) for e in range(epochs)]
    assert ours == schedule.tolist()
    with pytest.raises(ValueError, match="outside"):
        teacher_temperature(epochs + warmup, 0.04, 0.07, warmup, epochs)


def test_swav_multicrop_loss_by_hand() -> None:
    # K = 2, one image, 3 crops; the codes of crops 0 and 1, each predicted by the 2 others
    scores = [torch.tensor([[0.0, 0.0]]), torch.tensor([[LN3, 0.0]]), torch.tensor([[0.0, LN3]])]
    codes = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    # crop 0's codes from crops 1 and 2: -log 3/4 - log 1/4; crop 1's from 0 and 2: -log 1/2
    # - log 3/4; each halved (crops - 1), then averaged over the 2 assigned crops
    want = ((-math.log(0.75) - math.log(0.25)) / 2 + (math.log(2) - math.log(0.75)) / 2) / 2
    got = swav_multicrop_loss(scores, codes, temperature=1.0)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_swav_multicrop_loss_of_two_crops_is_swav_loss() -> None:
    g = torch.Generator().manual_seed(0)
    s1, s2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    q1, q2 = sinkhorn(s1, 0.05, 3), sinkhorn(s2, 0.05, 3)
    torch.testing.assert_close(
        swav_multicrop_loss([s1, s2], [q1, q2], 0.1), swav_loss(s1, s2, q1, q2, 0.1)
    )


# ------------------------------------------------------------------ against the reference


def test_dino_loss_and_centre_are_dino_s_over_steps(one_process_dist) -> None:
    crops, k, n, epochs = 6, 7, 5, 4
    ref = DINOLoss(k, crops, 0.04, 0.07, 2, epochs, student_temp=0.1, center_momentum=0.9)
    center = torch.zeros(1, k)
    g = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        student = torch.randn(crops * n, k, generator=g) * 3
        teacher = torch.randn(2 * n, k, generator=g) * 3 + 1.0  # off-centre: the centre moves
        want = ref(student, teacher, epoch)
        temp = teacher_temperature(epoch, 0.04, 0.07, 2, epochs)
        got = dino_loss(list(student.chunk(crops)), list(teacher.chunk(2)), center, 0.1, temp)
        center = update_center(center, list(teacher.chunk(2)), 0.9)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(center, ref.center, rtol=1e-6, atol=1e-7)
    assert center.abs().sum() > 0.5


@pytest.mark.parametrize(("use_bn", "norm_last", "layers"), [(False, True, 3), (True, False, 2)])
def test_dino_head_is_dino_s(use_bn: bool, norm_last: bool, layers: int) -> None:
    torch.manual_seed(0)
    ref = RefDINOHead(10, 9, use_bn, norm_last, layers, hidden_dim=16, bottleneck_dim=6)
    torch.manual_seed(0)
    ours = DINOHead(10, 9, 16, 6, layers, use_bn, norm_last)
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    assert ref_state.keys() == our_state.keys()  # weight_g / weight_v, as DINO's checkpoints
    for key, value in ref_state.items():
        assert torch.equal(value, our_state[key]), key  # the same initialisation
    assert ours.last_layer.weight_g.requires_grad == (not norm_last)
    x = torch.randn(4, 10)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # the norms apart from 1: the weight-normalised layer follows g
        ours.last_layer.weight_g.mul_(2.0)
        ref.last_layer.weight_g.mul_(2.0)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-6)


def test_teacher_momentum_is_dino_s_cosine_schedule() -> None:
    epochs, per_epoch = 3, 7
    ref = cosine_scheduler(0.996, 1, epochs, per_epoch)
    ema = EmaSchedule(0.996, 1.0, "cosine")
    ours = [ema.at(it, epochs * per_epoch) for it in range(epochs * per_epoch)]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-15)


def small_views(n: int = 4, local: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    big = [torch.randn(n, 3, 16, 16, generator=g) for _ in range(2)]
    return big + [torch.randn(n, 3, 8, 8, generator=g) for _ in range(local)]


@pytest.mark.parametrize("epoch", [0, 1])
def test_a_step_is_main_dino_s_step(tmp_path, one_process_dist, epoch: int) -> None:
    """One step of train_one_epoch: teacher on the globals, student on every crop, the
    loss, clipping, the last layer frozen in epoch 0, an SGD step, the teacher's EMA."""
    epochs, per_epoch, clip = 3, 5, 0.01
    keys = (*SMALL_HEAD, "dino.local_crops=2", f"dino.clip_grad={clip}")
    keys += ("dino.warmup_teacher_temp_epochs=2", "dino.teacher_temp=0.07", "dino.ema=0.9")
    cfg = tiny_config(tmp_path, *keys)
    torch.manual_seed(0)
    method = build_method(cfg, "dino")
    assert isinstance(method, DINO)
    # as main_dino.py builds them (a weight-normed head does not deep-copy)
    ref_student, ref_teacher = (
        MultiCropWrapper(
            copy.deepcopy(method.encoder.backbone),
            RefDINOHead(32, 20, hidden_dim=24, bottleneck_dim=12),
        )
        for _ in range(2)
    )
    ref_student.head.load_state_dict(method.dino_head.state_dict())
    ref_teacher.load_state_dict(ref_student.state_dict())
    ref_loss = DINOLoss(20, 4, 0.04, 0.07, 2, epochs)
    method.train()
    method.on_epoch_start(EpochContext(epoch, epochs, lambda f: torch.empty(0)))
    views = small_views()
    step = epoch * per_epoch + 2

    loss, _ = method(views)
    loss.backward()
    method.on_after_backward(step)
    want = ref_loss(ref_student(views), ref_teacher(views[:2]), epoch)
    want.backward()
    ref_clip_gradients(ref_student, clip)
    cancel_gradients_last_layer(epoch, ref_student, 1)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(method.center, ref_loss.center, rtol=1e-5, atol=1e-7)
    ours = dict(method.student.named_parameters())
    for name, p in ref_student.named_parameters():
        if p.grad is None:
            assert ours[name].grad is None, name
        else:
            torch.testing.assert_close(ours[name].grad, p.grad, rtol=1e-4, atol=1e-7)
    assert (method.dino_head.last_layer.weight_v.grad is None) == (epoch == 0)

    for module in (method.student, ref_student):
        torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1.0).step()
    method.on_step_end(step, epochs * per_epoch)
    m = cosine_scheduler(0.9, 1, epochs, per_epoch)[step]
    with torch.no_grad():
        for param_q, param_k in zip(
            ref_student.parameters(), ref_teacher.parameters(), strict=True
        ):
            param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
    ref_state = ref_teacher.state_dict()
    for name, value in method.teacher.state_dict().items():  # parameters and BN statistics
        torch.testing.assert_close(value, ref_state[name], rtol=1e-5, atol=1e-6, msg=name)
    student_bn = method.student.state_dict()["backbone.stem.1.running_mean"]
    assert not torch.equal(method.teacher.backbone.stem[1].running_mean, student_bn)


# ------------------------------------------------------------------ the method


def test_dino_views_teacher_and_export(tmp_path) -> None:
    cfg = tiny_config(tmp_path, *SMALL_HEAD)
    torch.manual_seed(0)
    method = build_method(cfg, "dino")
    spec = method.view_spec
    assert (spec.global_crops, spec.local_crops, spec.local_size) == (2, 8, 14)  # 32 px: 96/224
    assert (spec.global_scale, spec.local_scale) == ((0.14, 1.0), (0.05, 0.14))
    assert [v.blur_p for v in spec.per_view] == [1.0, 0.1] + [0.5] * 8
    assert [v.solarize_p for v in spec.per_view] == [0.0, 0.2] + [0.0] * 8
    method.attach_data(tiny_data())  # 16 px images: local crops of 7
    assert method.view_spec.local_size == 7
    views = ViewAugment(cfg.augment, 16, (0.5,) * 3, (0.25,) * 3, spec=method.view_spec)(
        tiny_data().pretrain.images[:4]
    )
    assert [tuple(v.shape[2:]) for v in views] == [(16, 16)] * 2 + [(7, 7)] * 8
    seen: dict[str, list[int]] = {"teacher": [], "student": []}
    method.teacher.backbone.register_forward_hook(
        lambda m, a, o: seen["teacher"].append(a[0].shape[0])
    )
    method.encoder.backbone.register_forward_hook(
        lambda m, a, o: seen["student"].append(a[0].shape[0])
    )
    method.train()
    loss, _ = method(views)
    assert torch.isfinite(loss)
    assert seen == {"teacher": [8], "student": [8, 32]}  # the teacher sees the globals only
    # the projection head is DINO's own; the encoder's is frozen, never in an optimizer
    assert not any(p.requires_grad for p in method.encoder.projector.parameters())
    # the export is the teacher's backbone, loadable as any encoder
    state = method.export_state()
    assert state.keys() == method.encoder.state_dict().keys()
    with torch.no_grad():
        method.teacher.backbone.stem[0].weight.add_(1.0)
    assert torch.equal(
        method.export_state()["backbone.stem.0.weight"], method.teacher.backbone.stem[0].weight
    )
    assert method.backbone is method.teacher.backbone  # what the monitors evaluate
    again = build_method(cfg, "dino", init=state)
    assert torch.equal(again.encoder.backbone.stem[0].weight, state["backbone.stem.0.weight"])


def test_dino_without_local_crops_and_blur(tmp_path) -> None:
    cfg = tiny_config(tmp_path, *SMALL_HEAD, "dino.local_crops=0", "dino.blur=false")
    method = build_method(cfg, "dino")
    assert method.view_spec.count == 2
    assert [v.blur_p for v in method.view_spec.per_view] == [None, None]  # augment.blur_p
    loss, _ = method(small_views(local=0))
    assert torch.isfinite(loss)


def test_bad_crop_scales_are_named(tmp_path) -> None:
    # config's rule (validation.structure_problems): refused when the config loads
    with pytest.raises(ConfigError, match=r"dino\.local_scale_min"):
        tiny_config(tmp_path, "dino.local_scale_min=0.5", "dino.local_scale_max=0.2")
    with pytest.raises(ConfigError, match=r"swav\.local_scale_min"):
        tiny_config(tmp_path, "swav.local_crops=2", "swav.local_scale_min=0.5")
    tiny_config(tmp_path, "swav.local_crops=0", "swav.local_scale_min=0.5")  # no local crops


def test_dino_is_a_comparison_arm_and_a_self_supervised_start() -> None:
    assert ARMS["dino"].method == "dino" and "dino" in SELF_SUPERVISED


def test_clip_gradients_is_dino_s() -> None:
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    b = copy.deepcopy(a)
    x = torch.randn(6, 5) * 10
    for net in (a, b):
        net(x).pow(2).sum().backward()
    clip_gradients(a, 1.0)
    ref_clip_gradients(b, 1.0)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)


@pytest.mark.slow
@pytest.mark.trains
def test_dino_trains_and_resumes_inside_an_epoch(tmp_path, monkeypatch) -> None:
    keys = (*SMALL_HEAD, "dino.local_crops=2", "optim.epochs=3", "train.checkpoint_every_s=0")
    keys += ("train.log_every=2", "dino.warmup_teacher_temp_epochs=2")

    def trainer(cfg, seed: int = 0) -> Trainer:
        torch.manual_seed(seed)
        return Trainer(
            build_method(cfg, "dino"), tiny_data(), cfg, cfg.optim, cfg.out_dir, CPU, "d"
        )

    full = trainer(tiny_config(tmp_path / "full", *keys))
    before = {k: v.clone() for k, v in full.method.state_dict().items()}
    full.fit()
    after = full.method.state_dict()
    assert not torch.equal(before["center"], after["center"])  # the centre follows
    moved = [k for k in after if k.startswith("teacher.") and not torch.equal(before[k], after[k])]
    assert moved  # the teacher follows the student

    cfg = tiny_config(tmp_path / "stopped", *keys)
    first = trainer(cfg)
    original, calls = DINO.forward, []

    def forward(self, *args):
        calls.append(1)
        if len(calls) == 8:  # epoch 2 (5 steps an epoch), a step inside it
            first.stop._handle(signal.SIGTERM, None)
        return original(self, *args)

    monkeypatch.setattr(DINO, "forward", forward)
    with pytest.raises(Interrupted):
        first.fit()
    monkeypatch.undo()
    _, meta = load_checkpoint(Path(cfg.out_dir) / LAST)
    assert (meta["epoch"], meta["step"]) == (1, 3)
    resumed = trainer(cfg, seed=123)
    with torch.no_grad():
        resumed.method.center.add_(1.0)  # restored from the checkpoint, not kept
    resumed.fit()
    for key, value in full.method.state_dict().items():
        assert torch.equal(value, resumed.method.state_dict()[key]), key


# ------------------------------------------------------------------ SwAV's multi-crop


def test_swav_keeps_two_crops_by_default_and_takes_local_crops(tmp_path) -> None:
    assert build_method(tiny_config(tmp_path), "swav").view_spec == TWO_VIEWS
    cfg = tiny_config(tmp_path, "swav.local_crops=6")
    method = build_method(cfg, "swav")
    spec = method.view_spec
    assert (spec.global_crops, spec.local_crops, spec.local_size) == (2, 6, 14)
    assert spec.local_scale == (0.05, 0.14) and spec.per_view == ()
    method.attach_data(tiny_data())
    assert method.view_spec.local_size == 7


def test_swav_multicrop_is_main_swav_s_loss(tmp_path, one_process_dist) -> None:
    cfg = tiny_config(tmp_path, "swav.local_crops=3", "swav.epsilon=0.5")
    torch.manual_seed(0)
    method = build_method(cfg, "swav")
    assert isinstance(method, SwAV)
    method.eval()  # fixed BatchNorm statistics: the same outputs however they are batched
    method.on_epoch_start(EpochContext(0, 1, lambda f: torch.empty(0)))
    views = small_views(n=6, local=3)
    loss, _ = method(views)
    with torch.no_grad():
        z = [F.normalize(method.encoder(v)[1], dim=1) for v in views]
        output = torch.cat([method.prototypes(zv) for zv in z])
    c = cfg.swav
    want = swav_reference_loss(output, 6, [0, 1], [2, 3], c.temperature, c.epsilon, 3)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    loss.backward()  # every crop's prediction reaches the network
    assert method.prototypes.weight.grad is not None


@pytest.mark.slow
@pytest.mark.trains
def test_swav_multicrop_trains_through_the_loop(tmp_path) -> None:
    cfg = tiny_config(tmp_path, "swav.local_crops=2", "optim.epochs=1")
    torch.manual_seed(0)
    method = build_method(cfg, "swav")
    seen: list[int] = []
    method.encoder.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[-1]))
    Trainer(method, tiny_data(), cfg, cfg.optim, tmp_path, CPU, "s").fit()
    assert seen[:2] == [16, 7]  # the global pair, then the local crops


# ------------------------------------------------------------------ two processes

WORLD, N_PER_RANK, K, STEPS = 2, 3, 6, 3


def _dist_inputs() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    n = WORLD * N_PER_RANK
    return [
        {
            "student": torch.randn(4, n, K, generator=g) * 2,  # 2 global + 2 local crops
            "teacher": torch.randn(2, n, K, generator=g) * 2 + 0.5,
        }
        for _ in range(STEPS)
    ]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _one_run(inputs: list[dict[str, torch.Tensor]], part: slice) -> dict[str, Any]:
    """The loss and centre of each step on the images ``part``, with DINO's DINOLoss
    beside (its own all_reduce under the process group)."""
    center = torch.zeros(1, K)
    ref = DINOLoss(K, 4, 0.04, 0.07, 0, STEPS)
    out: dict[str, Any] = {"loss": [], "center": [], "ref_loss": [], "ref_center": []}
    for step, batch in enumerate(inputs):
        student, teacher = list(batch["student"][:, part]), list(batch["teacher"][:, part])
        out["loss"].append(dino_loss(student, teacher, center, 0.1, 0.07))
        center = update_center(center, teacher, 0.9)
        out["center"].append(center)
        if dist.is_initialized():
            ref_out = ref(torch.cat(student), torch.cat(teacher), step)
            out["ref_loss"].append(ref_out)
            out["ref_center"].append(ref.center.clone())
    return out


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        part = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        torch.save(_one_run(_dist_inputs(), part), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_the_centre_under_two_processes_is_the_one_process_centre(tmp_path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    full = _one_run(_dist_inputs(), slice(None))
    for step in range(STEPS):
        for r in ranks:  # every rank holds the centre of the global batch
            torch.testing.assert_close(r["center"][step], full["center"][step])
            torch.testing.assert_close(r["ref_center"][step], full["center"][step])
            torch.testing.assert_close(r["ref_loss"][step], r["loss"][step])
        # equal halves: the mean of the ranks' losses is the loss of the whole batch
        mean = sum(r["loss"][step] for r in ranks) / WORLD
        torch.testing.assert_close(mean, full["loss"][step])
    # a rank alone would centre on its own half
    alone = _one_run(_dist_inputs(), slice(0, N_PER_RANK))
    assert not torch.allclose(alone["center"][-1], full["center"][-1])


def test_the_encoder_projection_head_is_untouched_by_training(tmp_path) -> None:
    cfg = tiny_config(tmp_path, *SMALL_HEAD, "dino.local_crops=1")
    torch.manual_seed(0)
    method = build_method(cfg, "dino")
    assert isinstance(method.encoder, Encoder)
    loss, _ = method(small_views(local=1))
    loss.backward()
    assert all(p.grad is None for p in method.encoder.projector.parameters())
    assert method.encoder.backbone.stem[0].weight.grad is not None
