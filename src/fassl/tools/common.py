"""What every tool needs: its run's configuration and its output folder.

A tool run on a checkpoint reads the configuration of the run that wrote it (the
``config.yaml`` beside it or up to two folders above, as ``fassl eval`` finds it) unless
``--config`` names another, so ``fassl rare`` ranks with the re-balancing weight the run
was trained with; with neither, it asks for ``--config`` rather than guess.
"""

from __future__ import annotations

from pathlib import Path

from fassl.config import Config, load_config
from fassl.recipes import run_config_for


def tool_config(checkpoint: Path, config: Path | None, overrides: list[str]) -> tuple[Config, str]:
    """(the config, where it came from): ``config``, else the run's own; never the
    defaults (a ConfigError asks for ``--config`` when the run's is not found)."""
    path = config or run_config_for(checkpoint)
    return load_config(path, overrides), str(path)


def default_out(checkpoint: Path, kind: str, name: str) -> Path:
    """``<checkpoint folder>/<kind>-<data name>``, the place ``fassl eval`` also writes to."""
    return checkpoint.parent / f"{kind}-{name}"
