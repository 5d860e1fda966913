"""Several methods over several seeds on the same data, probe and compute budget.

- ``arms``: an arm of ``compare.methods`` turned into its run's config, and ``run_arm``;
- ``run``: a comparison's runs, resumed where they stopped, and its tables
  (``fassl compare``, ``fassl tables``);
- ``sweep``: a comparison per point of ``compare.grid`` (the paper's Tables 3-5);
- ``tables`` and ``sweep_tables``: the markdown, CSV and figures they write.

The package itself holds only the arms' listing for ``fassl compare --help``: it loads no
torch, so the command line's help stays quick.
"""

from __future__ import annotations

from fassl.registry import ARMS, EQUAL_COMPUTE, METHOD_NAMES, PAPER_STRUCTURE


def arm_listing() -> str:
    """The arms ``compare.methods`` takes, by kind, for ``fassl compare --help``."""
    kinds: dict[str, list[str]] = {"methods": [], "equal": [], "paper": [], "variants": []}
    for a in ARMS.values():
        if a.structure == PAPER_STRUCTURE:
            kinds["paper"].append(a.name)
        elif a.structure == EQUAL_COMPUTE:
            kinds["equal"].append(a.name)
        elif a.name not in METHOD_NAMES:
            kinds["variants"].append(a.name)
        elif not a.name.startswith("fassl_"):  # FASSL's stages run as the pipeline arms
            kinds["methods"].append(a.name)
    return (
        f"arms (compare.methods):\n  methods: {', '.join(kinds['methods'])}\n"
        f"  FASSL at equal compute (its own teacher): {', '.join(kinds['equal'])}\n"
        f"  FASSL as the paper composes it (on the sdclr arm's export; fassl_from_sdclr_gh on\n"
        f"  sdclr_gh's), beside SDCLR trained on as long: {', '.join(kinds['paper'])}\n"
        f"  variants: {', '.join(kinds['variants'])}"
    )
