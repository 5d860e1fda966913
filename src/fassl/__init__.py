"""fassl: frequency-aware self-supervised learning on unlabeled, long-tailed images."""

__version__ = "0.1.0"
