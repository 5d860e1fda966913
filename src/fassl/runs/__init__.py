"""A run's life in one place: one folder trained, resumed, exported and probed.

- ``settings``: what a stage folder records (settings.json) and the check that a folder
  is only ever resumed with the settings it was trained with;
- ``stage``: one training stage into its folder (lock, settings, resume, train, export);
- ``pretrain`` (one method) and ``pipeline`` (FASSL's three stages), each a whole run;
- ``probes``: what a finished run is measured by (probes, analyses, report.md).

The arms of ``fassl compare`` build on these runs from above (``fassl.compare.arms``).
"""

from fassl.runs.pipeline import run_pipeline
from fassl.runs.pretrain import run_pretrain

__all__ = ["run_pipeline", "run_pretrain"]
