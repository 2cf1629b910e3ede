# Quick start: `make demo` (install into .venv and run the main job on bundled data), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test arm-device clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test,export,tvm]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/onexn-demo --out demo_out

test: $(STAMP)
	$(BIN)/python -m pytest

# The emulated aarch64 device (qemu user mode), cached outside the checkout; the demo and the tests
# prepare it themselves when they need it.
arm-device: $(STAMP)
	$(BIN)/onexn-arm-device prepare

clean:
	rm -rf $(VENV) demo_out build *.egg-info .pytest_cache
