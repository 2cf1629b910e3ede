# Quick start: `make demo` (install into .venv and run the main job on bundled data), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test arm-device clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test,export,tvm]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/onexn-demo --out demo_out

# Debian's aarch64 cross linker: the cross-compile and emulated-device tests (and the demo's ARM builds)
# need it, so `make test` installs it with apt-get (sudo when not root) as CI does. Where apt-get cannot
# run, `make test SYSTEM_DEPS=no` runs the suite without it (those tests are then skipped, with the reason).
SYSTEM_DEPS ?= yes
system-deps:
ifeq ($(SYSTEM_DEPS),yes)
	@if ! command -v aarch64-linux-gnu-g++ >/dev/null; then \
	    SUDO=""; [ "$$(id -u)" -ne 0 ] && SUDO="sudo"; \
	    echo "installing Debian's g++-aarch64-linux-gnu (apt-get) for the ARM cross-compile tests"; \
	    $$SUDO apt-get update -q >/dev/null || true; \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q g++-aarch64-linux-gnu >/dev/null || { \
	        echo "make: could not install g++-aarch64-linux-gnu; run 'make test SYSTEM_DEPS=no' to test without it" >&2; \
	        exit 2; }; \
	fi
endif

test: $(STAMP) system-deps
	$(BIN)/python -m pytest

# The emulated aarch64 device (qemu user mode), cached outside the checkout; the demo and the tests
# prepare it themselves when they need it.
arm-device: $(STAMP)
	$(BIN)/onexn-arm-device prepare

clean:
	rm -rf $(VENV) demo_out build *.egg-info .pytest_cache
