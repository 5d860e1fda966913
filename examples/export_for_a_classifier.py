"""An exported encoder feeding a classifier that knows nothing of fassl: one command
trains, ``fassl export`` writes the backbone, and plain torch + scikit-learn take over.

    python examples/export_for_a_classifier.py --out /tmp/fassl-export
    python examples/export_for_a_classifier.py --epochs 1 --out /tmp/x   # a smoke test
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from fassl.cli import main as fassl


def digits_as_images(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as float RGB images in [0, 1], upscaled to ``size``."""
    bunch = load_digits()
    small = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16
    big = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear")
    return big.expand(-1, 3, -1, -1), torch.tensor(bunch.target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("fassl-export"))
    args = parser.parse_args()
    run, export = args.out / "run", args.out / "export"
    # 1. an encoder of the long-tailed digits, and 2. its backbone for other programs
    settings = [f"optim.epochs={args.epochs}", "model.width=8", "train.progress=false"]
    assert fassl(["pretrain", "demo", "method=simclr", *settings, f"out_dir={run}"]) == 0
    assert fassl(["export", str(run / "encoder.safetensors"), "--out", str(export)]) == 0
    # 3. plain torch from here: the TorchScript backbone and the normalisation it records
    backbone = torch.jit.load(str(export / "backbone.pt")).eval()
    info = json.loads((export / "backbone.json").read_text())
    mean = torch.tensor(info["data_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(info["data_std"]).view(1, 3, 1, 1)
    images, labels = digits_as_images()
    with torch.no_grad():
        features = backbone((images - mean) / std)
    half = len(features) // 2
    classifier = LogisticRegression(max_iter=3000).fit(features[:half], labels[:half])
    accuracy = classifier.score(features[half:], labels[half:])
    print(
        f"{info['arch']} width {info['width']}: {features.shape[1]}-d features, "
        f"logistic regression {100 * accuracy:.1f} % on the held-out half of the digits"
    )


if __name__ == "__main__":
    main()
