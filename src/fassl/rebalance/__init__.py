"""phi, the per-image re-balancing weight of stage 2: Eq. 3, its variants, their analysis.

- ``phi``: Eq. 3's log phi against the prototypes, and ``normalize_weights``, which turns
  log phi into a batch's weights (Sec. 4.2: standardise, clip, mean 1);
- ``reweighters``: every variant of the weight as one ``Reweighter`` class
  (``REWEIGHTERS``, from ``fassl.registry.WEIGHT_CLASSES``);
- ``enrichment``: does a weight find the rare images? (label-using diagnostics only).
"""

from fassl.rebalance.phi import log_rebalance_weight, normalize_weights
from fassl.rebalance.reweighters import REWEIGHTERS, NoWeight, Reweighter, build_reweighter

__all__ = [
    "REWEIGHTERS",
    "NoWeight",
    "Reweighter",
    "build_reweighter",
    "log_rebalance_weight",
    "normalize_weights",
]
