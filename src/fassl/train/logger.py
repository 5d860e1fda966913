"""Metrics to a JSON-lines file and to TensorBoard, from the main process only."""

from __future__ import annotations

import json
from pathlib import Path


class MetricLogger:
    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tb"))

    def log(self, stage: str, step: int, values: dict[str, float], kind: str = "step") -> None:
        if not self.enabled:
            return
        row = {"stage": stage, "kind": kind, "step": step} | values
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"{stage}/{kind}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
