"""Image sources, the long-tailed protocol, in-memory datasets and on-device augmentation.

build.build_data(cfg, seed) is the entry point. One module per idea:

- decoding: ``decode`` (image files -> ImageSet), ``walk`` (listing a folder),
  ``cache`` (decoded sets on disk), ``archives`` (data.root as a folder or archive),
  ``streaming`` (splits decoded on the fly), ``filelist`` (explicit lists of files)
- sources, by name in ``sources.SOURCES``: ``digits``, ``cifar``, ``folder``,
  ``tinyimagenet``, and ``lists`` (list files: dataset=splitfile, and SDCLR's CIFAR
  index files, data.sdclr_splits)
- the protocol: ``longtail`` (pure draws from labels), ``protocol`` (a source's splits)
- ``bundle`` (LongTailData, Split, channel statistics); ``augment``, ``boost`` and
  ``colour`` (batched augmentation); ``collection`` (the images a per-image tool runs on)
"""
