"""Batched augmentation on the device, applied by the training loop to each batch.

``views`` (the views a method declares, ``ViewSpec``: global and local crops and per-view
settings; by default the two-view pipeline of SimCLR / SDCLR: crop, flip, colour jitter,
grayscale, blur), ``boost`` (BCL's memory-boosted augmentation of each image at its own
strength) and ``colour`` (the colour-space and blur kernels both share).
"""
