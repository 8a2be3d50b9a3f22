# `make demo` and `make test` each set up .venv on a fresh machine (Python 3.11+), then run.
# EXTRAS: the setup.py extras installed; `make test EXTRAS=dev,tpu` adds libtpu (about 700 MB), which
# the TPU-compiler tests need (CI runs them; without it they are skipped).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_FLAGS := --quiet --disable-pip-version-check
EXTRAS ?= dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: demo test install clean

$(STAMP): setup.py
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "var-jax needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

# Test files run in parallel processes (most of a test's time is XLA compiling, one core each); all
# of a file's tests run in one process, so its shared fixtures (a trained run, a compiled replay) are
# built once, not once per process.
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile tests

demo: $(STAMP)
	$(PY) -m var_jax.demo

clean:
	rm -rf $(VENV) .pytest_cache
