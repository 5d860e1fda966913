"""Linear probes on a frozen encoder: a fast one on cached features and SDCLR's recipe."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fassl.data import Split
from fassl.eval.crops import crop_flip_at
from fassl.eval.metrics import per_class_accuracy
from fassl.features import backbone_forward, eval_mode, extract_features
from fassl.runtime import Runtime


@dataclass(frozen=True)
class LabeledFeatures:
    """Features (N, D) and their labels (N,); a label of -1 means unlabelled."""

    features: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class FastProbeSettings:
    """The fast probe's SGD: epochs, peak lr (cosine per step), weight decay, batch."""

    epochs: int
    lr: float
    weight_decay: float
    batch_size: int


@dataclass(frozen=True)
class ProbeSplits:
    """Images of the augmented probe: train / val / test splits and their normalisation."""

    train: Split
    val: Split
    test: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int


@dataclass(frozen=True)
class SDCLRProbeSchedule:
    """SDCLR's probe: epochs, lr x0.1 at each milestone epoch, batch size."""

    epochs: int
    milestones: list[int]
    lr: float
    batch_size: int


@dataclass
class ProbeResult:
    """Test predictions of the epoch with the best validation accuracy.

    ``best_epoch`` counts from 1; accuracies are mean per-class accuracies in percent
    (nan when the split is empty or unlabelled).
    """

    test_pred: torch.Tensor
    best_epoch: int
    val_acc: float
    variant: str
    epochs: int
    test_acc: float = math.nan
    val_history: list[float] = field(default_factory=list)


def _mean_class_acc(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    acc = per_class_accuracy(pred, labels, num_classes)
    acc = acc[~torch.isnan(acc)]
    return float(acc.mean()) if acc.numel() else math.nan


def _seeded_linear(dim: int, num_classes: int, generator: torch.Generator) -> nn.Linear:
    """nn.Linear with PyTorch's default uniform(+-1/sqrt(dim)) init drawn from ``generator``.

    A private generator keeps the probe reproducible without touching the global RNG.
    """
    layer = nn.Linear(dim, num_classes, device="meta").to_empty(device="cpu")  # no init draw
    bound = 1.0 / math.sqrt(dim) if dim else 0.0
    with torch.no_grad():
        layer.weight.copy_((torch.rand(num_classes, dim, generator=generator) * 2 - 1) * bound)
        layer.bias.copy_((torch.rand(num_classes, generator=generator) * 2 - 1) * bound)
    return layer


class _BestKeeper:
    """Tracks validation accuracy per epoch and keeps a copy of the best weights.

    Without labelled validation data the last epoch counts as the best.
    """

    def __init__(self, has_val: bool) -> None:
        self.has_val = has_val
        self.history: list[float] = []
        self.best_epoch = 0
        self.best_acc = -math.inf
        self.state: dict[str, torch.Tensor] = {}

    def update(self, epoch: int, acc: float, state: dict[str, torch.Tensor]) -> None:
        self.history.append(acc)
        if not self.has_val or acc > self.best_acc:  # ties keep the earlier epoch
            self.best_epoch, self.best_acc = epoch, acc
            self.state = {k: v.detach().clone() for k, v in state.items()}

    @property
    def val_acc(self) -> float:
        return self.best_acc if self.has_val else math.nan


@contextlib.contextmanager
def _single_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run tiny CPU kernels on one thread: for a 256 x 512 x C step, thread-pool
    synchronisation costs more than the arithmetic, badly so on a busy machine."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _predict(
    weight: torch.Tensor, bias: torch.Tensor, feats: torch.Tensor, batch_size: int = 8192
) -> torch.Tensor:
    """Argmax of the linear head ``feats @ weight.T + bias``, in chunks."""
    if feats.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=feats.device)
    return torch.cat(
        [
            torch.addmm(bias, feats[i : i + batch_size], weight.T).argmax(1)
            for i in range(0, feats.shape[0], batch_size)
        ]
    )


def _check_inputs(labels: torch.Tensor, epochs: int) -> None:
    if epochs < 1:
        raise ValueError(f"a probe needs at least one epoch, got {epochs}")
    _require_labels(labels, "train")


def _require_labels(labels: torch.Tensor, what: str) -> None:
    if labels.numel() == 0 or bool((labels < 0).any()):
        raise ValueError(f"the probe's {what} split needs labels for every image")


def _softmax_regression_grad(
    weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the mean cross-entropy of a linear head, in closed form.

    d loss / d logits = (softmax - onehot) / B. Written out because autograd's
    per-step overhead dominates a 512 x C head (several times slower on small CPUs).
    """
    delta = torch.addmm(bias, x, weight.T).softmax(1)
    delta[torch.arange(x.shape[0], device=x.device), y] -= 1.0
    delta /= x.shape[0]
    return delta.T @ x, delta.sum(0)


def _best_result(
    keeper: _BestKeeper,
    x_test: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    variant: str,
    epochs: int,
) -> ProbeResult:
    """Test predictions of the best epoch's linear layer."""
    test_pred = _predict(keeper.state["weight"], keeper.state["bias"], x_test).cpu()
    return ProbeResult(
        test_pred=test_pred,
        best_epoch=keeper.best_epoch,
        val_acc=keeper.val_acc,
        variant=variant,
        epochs=epochs,
        test_acc=_mean_class_acc(test_pred, test_labels, num_classes),
        val_history=keeper.history,
    )


def linear_probe_fast(
    train: LabeledFeatures,
    val: LabeledFeatures,
    test: LabeledFeatures,
    num_classes: int,
    settings: FastProbeSettings,
    seed: int,
    device: torch.device,
) -> ProbeResult:
    """Linear classifier on cached features (the fast variant of the protocol).

    Features are standardised with the train statistics, then a linear layer is
    trained with SGD (momentum 0.9, PyTorch's update rule, weight decay on weight and
    bias) and a per-step cosine learning rate. The head of the epoch with the best
    validation mean per-class accuracy predicts the test set. Minibatches index
    preloaded device tensors: no DataLoader, no autograd.
    """
    epochs, lr, weight_decay = settings.epochs, settings.lr, settings.weight_decay
    batch_size = settings.batch_size
    _check_inputs(train.labels, epochs)
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    mu = train.features.float().mean(0)
    sd = train.features.float().std(0, correction=0).clamp_min(1e-6)

    def prep(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - mu) / sd).to(device)

    x_train, y_train = prep(train.features), train.labels.to(device).long()
    x_val, x_test = prep(val.features), prep(test.features)
    init = _seeded_linear(x_train.shape[1], num_classes, gen)
    params = [init.weight.detach().to(device), init.bias.detach().to(device)]
    momentum = [torch.zeros_like(p) for p in params]
    n = x_train.shape[0]
    total_steps = max(1, epochs * math.ceil(n / batch_size))
    keeper = _BestKeeper(has_val=bool((val.labels >= 0).any()))
    step = 0
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=gen).to(device)
        with _single_thread_on_cpu(device):
            for start in range(0, n, batch_size):
                idx = perm[start : start + batch_size]
                grads = _softmax_regression_grad(*params, x_train[idx], y_train[idx])
                step_lr = lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
                for p, g, buf in zip(params, grads, momentum, strict=True):
                    if weight_decay:
                        g = g.add(p, alpha=weight_decay)
                    buf.mul_(0.9).add_(g)  # torch.optim.SGD: buf = m * buf + g, buf_0 = 0
                    p.add_(buf, alpha=-step_lr)
                step += 1
        val_acc = _mean_class_acc(_predict(*params, x_val), val.labels, num_classes)
        keeper.update(epoch, val_acc, {"weight": params[0], "bias": params[1]})
    return _best_result(keeper, x_test, test.labels, num_classes, "fast", epochs)


PROBE_PADDING = 4  # SDCLR's RandomCrop(32, padding=4)


def _epoch_draws(n: int, batch_size: int, padding: int, generator: torch.Generator) -> torch.Tensor:
    """(4, n) int64 on the host: an epoch's permutation, then every image's crop offsets
    (rows, columns) and flip, drawn from ``generator`` in the order
    ``fassl.eval.crops.random_crop_flip`` draws them batch by batch, so the probe sees
    the same images as a per-batch draw; one copy to the device an epoch."""
    perm = torch.randperm(n, generator=generator)
    dy, dx, flip = [], [], []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        dy.append(torch.randint(0, 2 * padding + 1, (b,), generator=generator))
        dx.append(torch.randint(0, 2 * padding + 1, (b,), generator=generator))
        flip.append(torch.rand(b, generator=generator) < 0.5)
    return torch.stack([perm, torch.cat(dy), torch.cat(dx), torch.cat(flip).long()])


def _step_lr(lr: float, epoch: int, milestones: list[int]) -> float:
    """MultiStepLR(gamma 0.1) for a 0-based epoch index: x0.1 from each milestone on."""
    return lr * 0.1 ** sum(epoch >= m for m in milestones)


def linear_probe_sdclr(
    backbone: nn.Module,
    splits: ProbeSplits,
    schedule: SDCLRProbeSchedule,
    seed: int,
    rt: Runtime,
) -> ProbeResult:
    """SDCLR's linear evaluation: augmented images through the frozen backbone.

    The backbone stays in eval mode (BN statistics frozen) and runs without autograd,
    so neither its weights, its buffers nor its ``requires_grad`` flags change. A linear
    head is trained with SGD (momentum 0.9, no weight decay), RandomCrop(pad 4) + flip,
    and the learning rate x0.1 at each milestone (0-based epoch index, as MultiStepLR).
    The frozen backbone makes un-augmented val/test features constant, so they are
    extracted once and the head is scored on them after every epoch.

    A step never waits for the device: the training images and labels (a tensor split)
    and the normalisation go to the device once, each epoch's order, crop offsets and
    flips in one copy; only a lazy split's images are read batch by batch on the host.
    """
    train, val, test = splits.train, splits.val, splits.test
    mean, std, num_classes = splits.mean, splits.std, splits.num_classes
    epochs, lr, batch_size = schedule.epochs, schedule.lr, schedule.batch_size
    _check_inputs(train.labels, epochs)
    device, layout = rt.device, rt.memory_format_for(backbone)
    gen = torch.Generator().manual_seed(seed)
    with eval_mode(backbone):
        val_feats = extract_features(backbone, val.images, mean, std, rt).to(device)
        test_feats = extract_features(backbone, test.images, mean, std, rt).to(device)
        dim = val_feats.shape[1]  # extract_features runs one image even for empty splits
        head = _seeded_linear(dim, num_classes, gen).to(device)
        opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
        keeper = _BestKeeper(has_val=bool((val.labels >= 0).any()))
        n = len(train)
        on_device = isinstance(train.images, torch.Tensor)  # else lazy: read per batch
        images_all = train.images.to(device) if on_device else train.images
        labels_all = train.labels.to(device)
        m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=device).view(1, -1, 1, 1)
        for epoch in range(epochs):
            for group in opt.param_groups:
                group["lr"] = _step_lr(lr, epoch, schedule.milestones)
            host_draws = _epoch_draws(n, batch_size, PROBE_PADDING, gen)
            draws = host_draws.to(device, non_blocking=True)
            for start in range(0, n, batch_size):
                idx, dy, dx, flip = draws[:, start : start + batch_size]
                if on_device:
                    images = images_all[idx]
                else:
                    rows = images_all[host_draws[0, start : start + batch_size]]
                    images = torch.as_tensor(rows).to(device, non_blocking=True)
                images = crop_flip_at(images, dy, dx, flip.bool(), PROBE_PADDING)
                # normalize_images' arithmetic with the constants already on the device
                x = ((images.float() / 255.0 - m) / s).contiguous(memory_format=layout)
                feats = backbone_forward(backbone, x, rt)
                loss = F.cross_entropy(head(feats), labels_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            val_acc = _mean_class_acc(
                _predict(head.weight, head.bias, val_feats), val.labels, num_classes
            )
            keeper.update(epoch + 1, val_acc, head.state_dict())
    return _best_result(keeper, test_feats, test.labels, num_classes, "sdclr", epochs)
