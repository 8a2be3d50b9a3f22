# `make demo` and `make test` each set up .venv on a fresh machine (Python 3.11+), then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_FLAGS := --quiet --disable-pip-version-check

.PHONY: demo test install clean

$(VENV)/.installed: setup.py
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "var-jax needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Test files run in parallel processes (most of a test's time is XLA compiling, one core each).
test: $(VENV)/.installed
	$(PY) -m pytest -q -n auto --maxprocesses 4 tests

demo: $(VENV)/.installed
	$(PY) -m var_jax.demo

clean:
	rm -rf $(VENV) .pytest_cache
