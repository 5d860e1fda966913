"""A fassl loss in your own training loop: SimCLR's NT-Xent and FASSL's prototype loss
(Eq. 1-2) on a model and augmentation of your own.

    python examples/loss_in_your_loop.py            # a few hundred steps on random shapes
    python examples/loss_in_your_loop.py --steps 3  # a smoke test
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import fassl


def views(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Your own augmentation: random flips and noise, two views of each image."""
    flip = torch.rand(images.shape[0], 1, 1, 1) < 0.5
    first = torch.where(flip, images.flip(-1), images) + 0.1 * torch.randn_like(images)
    return first, images + 0.1 * torch.randn_like(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(  # your own network: any module that maps images to vectors
        nn.Conv2d(3, 16, 3, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 32),
    )
    prototypes = nn.Parameter(torch.randn(8, 32))  # K = 8 frequency-aware prototypes
    optimizer = torch.optim.SGD([*model.parameters(), prototypes], lr=0.1, momentum=0.9)
    images = torch.rand(64, 3, 16, 16)
    for step in range(args.steps):
        v1, v2 = views(images)
        z1, z2 = model(v1), model(v2)
        loss = fassl.nt_xent(z1, z2, temperature=0.2) + fassl.prototype_contrastive_loss(
            z1, z2, prototypes, temperature=0.2, normalize=True
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.4f}")
    # how rare each image looks to the prototypes (Eq. 3, larger = rarer), per batch
    with torch.no_grad():
        log_phi = fassl.log_rebalance_weight(model(images), prototypes, normalize=True)
    weights = fassl.normalize_weights(log_phi, clip_std=2.0, global_stats=False, strength=0.5)
    print(f"re-balancing weights: mean {weights.mean():.3f}, max {weights.max():.3f}")


if __name__ == "__main__":
    main()
