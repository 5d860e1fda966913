"""Finding configurations: the packaged recipes and the config of the run a file came from.

Torch-free, below every command: the command line, the tools and the benchmark all name a
recipe the same way (a path, or the name of a file in ``configs/``), and every tool that
takes a checkpoint finds its run's ``config.yaml`` the same way.
"""

from __future__ import annotations

from pathlib import Path

from fassl.errors import ConfigError
from fassl.names import CONFIG

RECIPES = Path(__file__).parent / "configs"
OVERLAYS = RECIPES / "overlays"  # partial recipes laid over another (fassl demo's fp32 size)


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def resolve_recipe(name: str) -> Path:
    """A config path, or the name of a packaged recipe (``cifar10_lt_cpu``)."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = RECIPES / (name if name.endswith(".yaml") else f"{name}.yaml")
    if packaged.is_file():
        return packaged
    known = ", ".join(recipe_names())
    raise ConfigError(f"config file not found: {name} (packaged recipes: {known})")


def find_run_config(checkpoint: Path) -> Path | None:
    """The ``config.yaml`` of the run a checkpoint belongs to: beside it (an export) or one
    or two folders up (``checkpoints/last.safetensors``, a stage of a pipeline)."""
    folder = checkpoint.absolute().parent
    for candidate in (folder, folder.parent, folder.parent.parent):
        if (candidate / CONFIG).is_file():
            return candidate / CONFIG
    return None


def run_config_for(checkpoint: Path) -> Path:
    """``find_run_config``, or a ConfigError asking for ``--config``: never a guessed
    dataset (the probes and tools must see the data the encoder was trained for)."""
    if not checkpoint.is_file():
        raise FileNotFoundError(2, "checkpoint not found", str(checkpoint))
    found = find_run_config(checkpoint)
    if found is None:
        raise ConfigError(
            f"no {CONFIG} beside {checkpoint} or in the two folders above it: pass the "
            "run's config with --config (a path or a packaged recipe name) so that the "
            "encoder sees the data it was trained for"
        )
    return found
