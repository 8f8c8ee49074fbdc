# Two commands for a new user:  `make app`  and  `make test`.
# Both run `make setup` first, which creates or updates .venv idempotently.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.coalora-setup

.PHONY: setup app test test-fast bench gpu-check llama-cpp clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

app: setup
	$(PY) app.py

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not real and not browser and not integration and not slow"

bench: setup
	$(PY) bench/quant.py

# CUDA vs CPU parity and the app latency bench on CUDA (bench/gpu_check.py); without a GPU it
# says so and exits 0. Not yet run on a GPU by this project.
gpu-check: setup
	$(PY) bench/gpu_check.py

# Optional: llama.cpp for `coalora verify --target gguf` (tests skip it when absent). PyPI has
# no wheel of llama-cpp-python, so pip compiles llama.cpp: ~15 minutes on 2 cores, needs a C++
# compiler and cmake (apt-get install build-essential cmake). Not part of `make setup` or CI.
llama-cpp: setup
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -q llama-cpp-python==0.3.36 diskcache==5.6.3

clean-venv:
	rm -rf $(VENV)
