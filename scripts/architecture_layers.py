"""Draw docs/architecture.md's layer table from the import contract in pyproject.toml.

The contract (``[tool.importlinter]``, checked by ``lint-imports`` in ``make test``) is
the rule; the table is its picture: one row per layer, top to bottom, each module with
the first line of its docstring. ``tests/test_architecture.py`` fails when the table and
the contract differ, so the picture cannot drift from the code.

    python scripts/architecture_layers.py          # rewrite the table in place
    python scripts/architecture_layers.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "fassl"
DOC = REPO / "docs" / "architecture.md"
BEGIN, END = "<!-- layers:begin (scripts/architecture_layers.py) -->", "<!-- layers:end -->"


def layers() -> list[list[str]]:
    """The contract's layers, top to bottom, each a list of sibling modules."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    contract = config["tool"]["importlinter"]["contracts"][0]
    return [[m.strip() for m in layer.split("|")] for layer in contract["layers"]]


def summary(module: str) -> str:
    """The first line of a module's (or package's) docstring."""
    path = PACKAGE / module / "__init__.py"
    if not path.is_file():
        path = PACKAGE / f"{module}.py"
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return doc.strip().splitlines()[0].rstrip(".") if doc.strip() else ""


def render() -> str:
    rows = ["| layer | module | what it holds |", "|---|---|---|"]
    for i, layer in enumerate(layers(), start=1):
        for j, module in enumerate(layer):
            kind = "package" if (PACKAGE / module).is_dir() else "module"
            cell = str(i) if j == 0 else ""
            rows.append(f"| {cell} | `{module}` ({kind}) | {summary(module)} |")
    return "\n".join([BEGIN, *rows, END])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    updated = text[:start] + render() + text[end:]
    if args.check:
        if updated != text:
            print(f"{DOC} is out of date: run python scripts/architecture_layers.py")
            return 1
        return 0
    DOC.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
