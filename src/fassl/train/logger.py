"""Metrics to a JSON-lines file and to TensorBoard, from the main process only.

A run resumed from a checkpoint logs the steps after it again, so the rows an earlier,
killed attempt wrote after the checkpoint are dropped first (``truncate_metrics``), and
TensorBoard is told to discard its events from that step on (``purge_step``). The log of
a resumed run is then row for row the log of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def truncate_metrics(path: Path, start_step: int) -> int:
    """Keep only the rows of ``path`` logged before ``start_step``; return how many went.

    Rewritten through a temporary file and a rename, so a kill here loses nothing. A
    torn last line (a kill while writing it) is dropped as well.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            dropped += 1
            continue
        if isinstance(step, int) and step < start_step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped


class MetricLogger:
    """Rows ``{"stage", "kind", "step", ...}`` to ``metrics.jsonl`` and TensorBoard scalars.

    Logging starts at step ``start_step`` (0, or the step after a resumed checkpoint, set
    with ``resume_at`` before the first row): on the first row, earlier attempts' rows
    from that step on are dropped. Files are opened on the first row only.
    """

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.start_step = 0
        self._tb = None
        self._opened = False

    def resume_at(self, step: int) -> None:
        """The run continues at optimizer step ``step``; rows from it on will be redone."""
        self.start_step = step

    def _open(self) -> None:
        self._opened = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.path, self.start_step)
        # start-up time: TensorBoard's writer takes about a second to import, paid only by
        # a run that logs a row
        from torch.utils.tensorboard import SummaryWriter

        tb = self.run_dir / "tb"
        purge = self.start_step if tb.is_dir() and any(tb.iterdir()) else None
        self._tb = SummaryWriter(str(tb), purge_step=purge)

    def log(self, stage: str, step: int, values: dict[str, float], kind: str = "step") -> None:
        if not self.enabled:
            return
        if not self._opened:
            self._open()
        row = {"stage": stage, "kind": kind, "step": step} | values
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"{stage}/{kind}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
