"""``fassl bench``: throughput, utilisation and memory of the training loop, per method.

``fassl.bench.settings`` holds the flags (torch-free), ``fassl.bench.run`` the measurement.
"""
