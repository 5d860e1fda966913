"""Images in, the long-tailed splits every stage reads out.

``build_data(cfg.data, seed)`` is the entry point; ``LongTailData`` and ``Split`` are what
it returns. The package, by what each part is:

- ``sources/``: one module per ``data.dataset`` (``cifar``, ``folder``, ``digits``,
  ``tinyimagenet``, ``splitfile``: list files), loaded by name from
  ``fassl.registry.SOURCES``;
- ``splits/``: the long-tailed protocol (``longtail``: pure draws from labels;
  ``protocol``: a source's splits put together) and SDCLR's published index files
  (``sdclr``, data.sdclr_splits);
- ``files/``: image files and where they live (``decode``, ``walk``, ``cache``,
  ``archives``, ``store``, ``filelist``);
- ``datasets`` (the types and channel statistics), ``build`` (the entry point),
  ``collection`` (the images a per-image tool runs on).

The batched augmentation that training applies on the device is ``fassl.augment``.
"""

from fassl.data.build import build_data
from fassl.data.datasets import GROUPS, LongTailData, Split, channel_stats

__all__ = ["GROUPS", "LongTailData", "Split", "build_data", "channel_stats"]
