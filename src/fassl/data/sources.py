"""The dataset sources by name: data.dataset -> the loader that builds its LongTailData.

A loader takes the DataConfig and the seed that draws the images, and returns the splits
of the long-tailed protocol (most sources decode (train, test) and call ``protocol.draw``).
Adding a source is one module beside this one, its test, and one line in ``SOURCES``
(plus the name in ``fassl.config.DATASETS``, which the config layer checks data.dataset
against without loading any source; an assert keeps the two lists equal).
"""

from __future__ import annotations

from collections.abc import Callable

from fassl import config
from fassl.config import DataConfig
from fassl.data import cifar, digits, folder, lists, tinyimagenet
from fassl.data.bundle import LongTailData

Loader = Callable[[DataConfig, int], LongTailData]

SOURCES: dict[str, Loader] = {
    "digits": digits.load,
    "cifar10": cifar.load,
    "cifar100": cifar.load,
    "folder": folder.load,
    "splitfile": lists.load_splitfile,
    "tinyimagenet": tinyimagenet.load,
}
DATASETS = tuple(SOURCES)
assert DATASETS == config.DATASETS, "fassl.config.DATASETS must list every source, in order"
