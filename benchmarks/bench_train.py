"""Kept for old command lines: ``python benchmarks/bench_train.py ARGS`` is
``fassl bench ARGS`` (step and full-epoch throughput, MFU, memory; see
``fassl bench --help`` and ``src/fassl/bench/``)."""

from __future__ import annotations

import sys

from fassl.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
