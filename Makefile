# One-command set-up: each target creates the virtual environment it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
# PyTorch with its matching torchvision (timm's backbones need both; PyPI's torchvision
# does not import beside the 2.13.0 CPU build). On a CUDA machine set TORCH_SPEC to the
# builds you want; EXTRAS=dev leaves timm out (its tests then skip, saying why).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev,timm

.PHONY: demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/fassl demo

# oneDNN's and ATen's AVX2 kernels, whatever this CPU has: what a laptop without AVX-512
# runs. The training tests run once more under them, so a newer CPU catches their faults.
AVX2_ENV := ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2

# Both passes on both cores (pytest-xdist: each test in one of two worker processes).
test: $(VENV)/.installed
	$(PY) -m ruff check src tests benchmarks scripts examples
	$(VENV)/bin/lint-imports
	$(VENV)/bin/fassl info
	$(PY) -m pytest -q -n 2
	$(AVX2_ENV) $(VENV)/bin/fassl info | grep capability
	$(AVX2_ENV) $(PY) -m pytest -q -n 2 -m trains

# What a change is first checked with, in under a minute on 2 cores: ruff, the layers and
# every test not marked slow (subprocesses, torchrun, multi-epoch runs) or trains.
test-fast: $(VENV)/.installed
	$(PY) -m ruff check src tests benchmarks scripts examples
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n 2 -m "not slow and not trains"

# Step and full-epoch throughput, MFU and memory of the loop (benchmarks/results/).
bench: $(VENV)/.installed
	$(VENV)/bin/fassl bench --method simclr,sdclr --width 32

clean:
	rm -rf $(VENV) runs
