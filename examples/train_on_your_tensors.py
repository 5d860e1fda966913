"""A fassl method trained by the project's training loop on your own tensors, then
probed: SimCLR (or any method of fassl.METHODS) on a long-tailed set of coloured images.

    python examples/train_on_your_tensors.py                  # a few minutes on a CPU
    python examples/train_on_your_tensors.py --epochs 1 --width 4   # a smoke test
"""

from __future__ import annotations

import argparse

import torch

import fassl


def long_tailed_images(counts: list[int], size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is their dominant colour, ``counts[c]`` of class c."""
    g = torch.Generator().manual_seed(0)
    colours = torch.tensor([[220, 40, 40], [40, 220, 40], [40, 40, 220], [220, 220, 40]])
    images, labels = [], []
    for c, n in enumerate(counts):
        noise = torch.randint(-60, 60, (n, 3, size, size), generator=g)
        images.append((colours[c].view(1, 3, 1, 1) + noise).clamp(0, 255).to(torch.uint8))
        labels.append(torch.full((n,), c))
    return torch.cat(images), torch.cat(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="simclr", choices=sorted(fassl.METHODS))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()
    images, labels = long_tailed_images([400, 150, 60, 25])
    # your tensors as the data every method trains on: used as found (already
    # long-tailed), 20 % of each class held out for the probes' test
    data = fassl.tensor_data(images, labels, classes=["red", "green", "blue", "yellow"])
    settings = [
        f"model.width={args.width}",
        "model.proj_hidden=64",
        "model.proj_dim=32",
        f"optim.epochs={args.epochs}",
        "optim.batch_size=64",
        "optim.warmup_epochs=0",
        "train.progress=false",
        "probe.fast_epochs=30",
        "probe.knn_k=10",
    ]
    method = fassl.fit(args.method, data, *settings)
    results = fassl.probe(method.backbone, data, *settings)
    row = results["standard"]
    print(
        f"{args.method}: standard probe All {row['all']:.1f}  Frequent {row['frequent']:.1f}  "
        f"Medium {row['medium']:.1f}  Rare {row['rare']:.1f}"
    )
    print(f"features: {tuple(fassl.embed(method.backbone, images[:8], data).shape)}")


if __name__ == "__main__":
    main()
