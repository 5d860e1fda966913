"""``fassl bench``: throughput, utilisation and memory of the training loop, per method."""

from fassl.bench.run import BenchSettings, add_arguments, run_bench, settings_from_args

__all__ = ["BenchSettings", "add_arguments", "run_bench", "settings_from_args"]
