"""dataset=digits: scikit-learn's embedded 8x8 handwritten digits (1,797 images), no download.

The smoke-test dataset: small enough to train on a CPU in seconds. It has no test split of
its own, so a seeded 30% of each class is held out as the test set.
"""

from __future__ import annotations

import numpy as np
import torch

from fassl.config import DataConfig
from fassl.data.datasets import LongTailData
from fassl.data.files.decode import ImageSet
from fassl.data.splits import protocol

DISPLAY_NAME = "digits"
TEST_FRACTION = 0.3
MAX_VAL_PER_CLASS = 10  # the digits have ~125 train images per class


def load_digits(image_size: int) -> ImageSet:
    """The 1,797 digits as an ImageSet, upscaled bilinearly to ``image_size``.

    0..16 is scaled to 0..255 and replicated to 3 channels.
    """
    # start-up time: sklearn.datasets takes about 2 s to import, which every command that
    # can load data would otherwise pay; only the digits need it
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32)).unsqueeze(1)  # (N, 1, 8, 8)
    big = torch.nn.functional.interpolate(
        small, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    gray = (big * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8)
    images = gray.expand(-1, 3, -1, -1).contiguous().numpy()
    classes = [str(int(c)) for c in bunch.target_names]
    return ImageSet(images, bunch.target.astype(np.int64), classes)


def load(cfg: DataConfig, seed: int) -> LongTailData:
    """The digits under the long-tailed protocol, at most 10 validation images a class."""
    train, test = protocol.carve_test(load_digits(cfg.image_size), TEST_FRACTION, seed)
    return protocol.draw(cfg, train, test, DISPLAY_NAME, seed, fixed_val_cap=MAX_VAL_PER_CLASS)
