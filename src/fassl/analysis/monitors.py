"""Label-using measurements during training (analysis only, never in the loss).

A monitor is a function of the Trainer, called after every ``train.knn_every`` epochs and
after the last (``fassl.train.loop``); the kNN accuracy monitor lives with the kNN
evaluation (``fassl.eval.knn.knn_monitor``).
"""

from __future__ import annotations

from collections.abc import Callable

from fassl.data import LongTailData
from fassl.rebalance.enrichment import weight_enrichment
from fassl.train.loop import Trainer


def stage2_monitor(data: LongTailData) -> Callable[[Trainer], dict[str, float]]:
    """During stage 2: enrichment of the configured weight on the teacher's features."""

    def monitor(trainer: Trainer) -> dict[str, float]:
        log_phi = trainer.method.dataset_log_phi(trainer.embed)
        if log_phi is None:
            return {}
        d = weight_enrichment(log_phi.cpu(), data.pretrain.labels, data.groups)
        return {f"top5_share_{g}": d["top_share"][g] for g in d["top_share"]} | {
            f"mean_log_phi_{g}": d["mean_log_phi"][g] for g in d["mean_log_phi"]
        }

    return monitor
