"""Image sources, the long-tailed protocol, in-memory datasets and on-device augmentation."""
