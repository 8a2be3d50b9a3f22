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

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

demo: $(VENV)/.installed
	@echo "The digits demo (train the tokenizer and a small VAR, then sample) arrives with the VAR training work."
	@echo "Until then: '$(PY) -m var_jax.parity tests/fixtures/official_tiny.npz' checks the models against the official code."

clean:
	rm -rf $(VENV) .pytest_cache
