"""Batched augmentation on the device, applied by the training loop to each batch.

``views`` (the two-view pipeline of SimCLR / SDCLR / BYOL: crop, flip, colour jitter,
grayscale, blur), ``boost`` (BCL's memory-boosted augmentation of each image at its own
strength) and ``colour`` (the colour-space and blur kernels both share).
"""
