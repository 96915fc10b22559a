# Two commands do all the set-up on a fresh machine:
#   make demo   -- the main job on an embedded default
#   make test   -- the test suite
#   make test-portable -- the suite on PyTorch's plain kernels (other float rounding)
# Each creates .venv and installs what it needs (PyTorch as the CPU build torch==2.13.0).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-portable bench clean

# torch is pinned in the same command as the extras: otherwise norse (a test extra) pulls a newer CUDA torch
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lowbit demo

test: $(STAMP)
	$(PY) -m pytest -q

# The suite again on PyTorch's plain kernels (no AVX) and oneDNN's SSE4.1 convolutions: float
# sums round differently, as on another CPU, so a test that holds only for one machine's
# rounding fails here. (ATEN_CPU_CAPABILITY moves the matmuls too; oneDNN needs its own switch.)
# The QEMU runs (marker "emulated") compare integer C with the integer reference, which PyTorch's
# float kernels do not touch: repeating them here would only repeat ~2 minutes of identical work.
test-portable: $(STAMP)
	ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 $(PY) -m pytest -q -m "not emulated"

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
