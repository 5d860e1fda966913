# One-command set-up: each target creates the virtual environment it needs.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; on a CUDA machine set TORCH_SPEC to the build you want.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/fassl demo

test: $(VENV)/.installed
	$(PY) -m ruff check src tests benchmarks scripts
	$(PY) -m pytest -q

# Step and full-epoch throughput, MFU and memory of the loop (benchmarks/results/).
bench: $(VENV)/.installed
	$(VENV)/bin/fassl bench --method simclr,sdclr --width 32

clean:
	rm -rf $(VENV) runs
