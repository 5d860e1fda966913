"""Inputs of ``fassl bench``: a synthetic CIFAR-10-LT-sized dataset, and the per-image
pipeline (torchvision transforms, else kornia's, in DataLoader workers) it is compared
with."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from fassl.augment.views import RATIO, TWO_VIEWS
from fassl.bench.settings import CIFAR10_LT_IMAGES
from fassl.data import LongTailData, Split
from fassl.train.loop import Trainer


def synthetic_data(n: int, size: int, classes: int = 10, seed: int = 0) -> LongTailData:
    """Random uint8 images with CIFAR-10-LT's shape: ``n`` long-tailed (rho 100) images to
    pre-train on, a balanced kNN bank and a validation set scaled like CIFAR's 10k / 5k."""
    g = torch.Generator().manual_seed(seed)
    share = torch.tensor([100.0 ** (-i / (classes - 1)) for i in range(classes)])
    counts = (share / share.sum() * n).round().clamp(min=1).long()
    counts[0] += n - int(counts.sum())

    def split(per_class: list[int]) -> Split:
        total = sum(per_class)
        images = torch.randint(0, 256, (total, 3, size, size), dtype=torch.uint8, generator=g)
        labels = torch.repeat_interleave(torch.arange(classes), torch.tensor(per_class))
        return Split(images, labels)

    scale = n / CIFAR10_LT_IMAGES
    per = max(1, round(1000 * scale)), max(1, round(500 * scale))
    thirds = [list(range(0, 3)), list(range(3, 7)), list(range(7, classes))]
    return LongTailData(
        name="synthetic",
        classes=[f"c{i}" for i in range(classes)],
        pretrain=split(counts.tolist()),
        pool=split([per[0]] * classes),
        few_shot=split([1] * classes),
        val=split([per[1]] * classes),
        test=split([1] * classes),
        class_counts=counts.tolist(),
        groups=dict(zip(("frequent", "medium", "rare"), thirds, strict=True)),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )


def per_image_augment(trainer: Trainer) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The recipe's two-view augmentation as a per-image transform of a uint8 image:
    torchvision's transforms, else kornia.augmentation on one image at a time (the same
    operations, image by image); ImportError when neither library imports."""
    a, d = trainer.cfg.augment, trainer.data
    size = d.image_size
    try:  # an optional dependency: the baseline's library, where it imports
        from torchvision import transforms as T
    except ImportError:
        pass
    else:
        return "torchvision", T.Compose(
            [
                T.RandomResizedCrop(size, scale=(a.crop_scale_min, 1.0)),
                T.RandomHorizontalFlip(a.flip_p),
                T.RandomApply(
                    [T.ColorJitter(a.brightness, a.contrast, a.saturation, a.hue)], a.jitter_p
                ),
                T.RandomGrayscale(a.grayscale_p),
                T.ConvertImageDtype(torch.float32),
                T.Normalize(d.mean, d.std),
            ]
        )
    import kornia.augmentation as K  # optional too (dev extra): ImportError when missing

    aug = torch.nn.Sequential(
        K.RandomResizedCrop((size, size), scale=(a.crop_scale_min, 1.0), ratio=RATIO),
        K.RandomHorizontalFlip(p=a.flip_p),
        K.ColorJitter(a.brightness, a.contrast, a.saturation, a.hue, p=a.jitter_p),
        K.RandomGrayscale(p=a.grayscale_p),
        K.Normalize(torch.tensor(d.mean), torch.tensor(d.std)),
    )
    return "kornia", lambda image: aug(image[None].float() / 255)[0]


def per_image_baseline(trainer: Trainer, steps: int) -> tuple[str, float] | None:
    """Images/s when a per-image pipeline (``per_image_augment``) makes the two views
    image by image in DataLoader workers and the same model trains on them, with the
    library used; None when neither torchvision nor kornia can be imported, or when the
    method takes other views than the default pair (the baseline makes only those)."""
    if trainer.method.view_spec != TWO_VIEWS:
        print(f"per-image baseline skipped: {trainer.method.name} takes other views than two")
        return None
    try:
        library, aug = per_image_augment(trainer)
    except ImportError:
        print("per-image baseline skipped: neither torchvision nor kornia can be imported")
        return None
    images = trainer.data.pretrain.images

    class TwoViews(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return aug(images[i]), aug(images[i])

    batch = trainer.optim_cfg.batch_size
    workers = min(8, torch.multiprocessing.cpu_count())
    loader = torch.utils.data.DataLoader(
        TwoViews(), batch, shuffle=True, num_workers=workers, drop_last=True
    )
    fmt, done, t0 = trainer.memory_format, 0, 0.0
    for v1, v2 in loader:
        if done == 2:  # two warm-up steps
            trainer.rt.synchronize()
            t0 = time.perf_counter()
        v1 = v1.to(trainer.device, non_blocking=True).contiguous(memory_format=fmt)
        v2 = v2.to(trainer.device, non_blocking=True).contiguous(memory_format=fmt)
        with trainer.autocast():
            loss, _ = trainer.forward([v1, v2])
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        done += 1
        if done == 2 + steps:
            break
    trainer.rt.synchronize()
    return (library, (done - 2) * batch / (time.perf_counter() - t0)) if done > 2 else None
