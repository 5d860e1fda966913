"""From a DataConfig to the in-memory LongTailData every stage reads (docs/method.md protocol).

data.dataset names the source (sources.SOURCES), which decodes the images and splits them
by the long-tailed protocol (splits/protocol.py) or by its own list files
(sources/splitfile.py). With data.sdclr_splits, SDCLR's published index files give the
splits of CIFAR instead (splits/sdclr.py).
"""

from __future__ import annotations

from fassl.config import DataConfig
from fassl.data.datasets import LongTailData
from fassl.data.sources import SOURCES
from fassl.data.splits import sdclr
from fassl.errors import DataError


def build_data(cfg: DataConfig, seed: int = 0) -> LongTailData:
    """Load the source named by ``cfg`` and split it by the long-tailed protocol.

    ``seed`` draws the images (test/val hold-outs, long-tailed and few-shot subsets);
    ``cfg.split`` draws which classes are frequent.
    """
    if cfg.sdclr_splits:
        return sdclr.load(cfg)
    load = SOURCES.get(cfg.dataset)
    if load is None:
        raise DataError(f"unknown dataset {cfg.dataset!r}")
    return load(cfg, seed)
