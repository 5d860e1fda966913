"""Types of the command-line flags: ranges, choices and ``--out`` kinds, checked first.

Every numeric flag has a range, every list its choices, every ``--out`` its kind, checked
by argparse before any work starts.

A violation ends the command with argparse's usage line and one line naming the flag
(``fassl embed: error: argument --batch-size: must be >= 1, got 0``), exit status 2.
Torch-free, below the commands that use it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path


def at_least(minimum: int) -> Callable[[str], int]:
    """An int flag >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def int_list(minimum: int) -> Callable[[str], list[int]]:
    """A comma-separated list of ints, each >= ``minimum``: ``32,64``."""
    one = at_least(minimum)

    def parse(text: str) -> list[int]:
        values = [one(part) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError("give at least one value")
        return values

    parse.__name__ = "comma-separated integers"
    return parse


def choice_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """A comma-separated list of names from ``choices``: ``simclr,sdclr``."""

    def parse(text: str) -> list[str]:
        values = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [v for v in values if v not in choices]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"{unknown or 'nothing'} not in {', '.join(choices)}")
        return values

    parse.__name__ = "comma-separated names"
    return parse


def out_folder(text: str) -> Path:
    """An output folder: new, or an existing folder (never an existing file)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file; --out takes a folder")
    return path


def out_file(suffix: str) -> Callable[[str], Path]:
    """An output file ending in ``suffix`` (never an existing folder)."""

    def parse(text: str) -> Path:
        path = Path(text)
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{path} is a folder; --out takes a {suffix} file")
        if path.suffix.lower() != suffix:
            raise argparse.ArgumentTypeError(f"{path} must end in {suffix}")
        return path

    parse.__name__ = f"{suffix} file"
    return parse


def file_stem(text: str) -> str:
    """A file name without folders (``--name``)."""
    if not text or "/" in text or "\\" in text or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"must be a plain file name, got {text!r}")
    return text
