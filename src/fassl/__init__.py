"""fassl: frequency-aware self-supervised learning on unlabeled, long-tailed images.

The Python face of the package (docs/api.md): ``fassl.api`` trains and evaluates on your
own tensors; the pieces below are the same objects the command line uses. They load on
first use (``fassl.nt_xent`` imports ``fassl.losses``), so ``import fassl.config`` and
``fassl --help`` do not pay for torch (start-up time).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    # plain functions on your own data
    # (named apart from the package's modules: fassl.train is the training loop's package)
    "api": "fassl.api",
    "make_config": "fassl.api",
    "tensor_data": "fassl.api",
    "dataset_data": "fassl.api",
    "fit": "fassl.api",
    "fit_pipeline": "fassl.api",
    "embed": "fassl.api",
    "probe": "fassl.api",
    # configuration
    "Config": "fassl.config",
    "load_config": "fassl.config",
    # losses: one pure function per equation
    "losses": "fassl.losses",
    "nt_xent": "fassl.losses",
    "nt_xent_per_image": "fassl.losses",
    "prototype_scores": "fassl.losses",
    "prototype_contrastive_loss": "fassl.losses",
    "log_rebalance_weight": "fassl.rebalance",
    "normalize_weights": "fassl.rebalance",
    "consistency_loss": "fassl.losses",
    "byol_loss": "fassl.losses",
    "swav_loss": "fassl.losses",
    "sinkhorn": "fassl.losses",
    "ldam_loss": "fassl.losses",
    "ldam_margins": "fassl.losses",
    "drw_class_weights": "fassl.losses",
    # methods and the registry
    "METHODS": "fassl.methods",
    "Method": "fassl.methods",
    "build_method": "fassl.methods",
    "build_encoder": "fassl.methods",
    # models
    "build_backbone": "fassl.models",
    "Encoder": "fassl.models",
    # the one training loop
    "Trainer": "fassl.train.loop",
    # evaluation
    "evaluate": "fassl.eval",
    "linear_probe_fast": "fassl.eval",
    "linear_probe_sdclr": "fassl.eval",
    "knn_predict": "fassl.eval",
    "group_metrics": "fassl.eval",
    # anything a run writes, loaded back
    "load_encoder": "fassl.encoders",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fassl' has no attribute {name!r}")
    loaded = importlib.import_module(module)
    value = loaded if module.rpartition(".")[2] == name else getattr(loaded, name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
