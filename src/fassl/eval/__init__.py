"""Evaluation: frozen features, linear probes, kNN and the paper's group metrics."""

from fassl.eval.evaluate import evaluate, raw_pixel_reference
from fassl.eval.knn import knn_predict
from fassl.eval.metrics import group_metrics, per_class_accuracy
from fassl.eval.probe import ProbeResult, linear_probe_fast, linear_probe_sdclr
from fassl.features import extract_features

__all__ = [
    "ProbeResult",
    "evaluate",
    "extract_features",
    "group_metrics",
    "knn_predict",
    "linear_probe_fast",
    "linear_probe_sdclr",
    "per_class_accuracy",
    "raw_pixel_reference",
]
