# Quick start: `make demo` (install into .venv and run the main job on bundled data), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

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

clean:
	rm -rf $(VENV) demo_out build *.egg-info .pytest_cache
