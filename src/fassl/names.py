"""The vocabulary every layer shares: pipeline stages and the files a run writes.

Torch-free and import-free, so the command line and the config layer can use it without
loading the training code.
"""

from __future__ import annotations

# pipeline stage -> the method it trains, in the pipeline's order
STAGE_METHODS = {
    "teacher": "sdclr",
    "prototypes": "fassl_prototypes",
    "rebalance": "fassl_rebalance",
}
PIPELINE_STAGES = tuple(STAGE_METHODS)
RUN = "run"  # the single stage of ``fassl pretrain``, for --restart

# files of a stage folder
CONFIG = "config.yaml"  # the resolved config
EXPORT = "encoder.safetensors"  # the trained encoder (and prototypes)
LAST = "checkpoints/last.safetensors"  # the training checkpoint a rerun resumes from
SETTINGS = "settings.json"  # the keys the stage was trained with
RESULTS = "results.json"  # the probes' numbers
REPORT = "report.md"  # the run's numbers and analyses, for people
