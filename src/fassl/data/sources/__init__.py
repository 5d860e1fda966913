"""The dataset sources by name: data.dataset -> the loader that builds its LongTailData.

A loader takes the DataConfig and the seed that draws the images, and returns the splits
of the long-tailed protocol (most sources decode (train, test) and call ``protocol.draw``).
Adding a source is one module beside this one, its test, and one line in
``fassl.registry.SOURCES`` (its loader and whether it reads data.root), which the config
layer checks data.dataset against without loading any source.
"""

from __future__ import annotations

from collections.abc import Callable

from fassl.config import DataConfig
from fassl.data.datasets import LongTailData
from fassl.registry import SOURCES as DECLARED
from fassl.registry import load

Loader = Callable[[DataConfig, int], LongTailData]

# name -> loader, from the registry's entries
SOURCES: dict[str, Loader] = {name: load(source.loader) for name, source in DECLARED.items()}
DATASETS = tuple(SOURCES)
