# The two commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.stillflow-installed
# torch first, pinned: 2.13.0 is the CPU build on local disk; any other version pulls CUDA wheels.
TORCH  := torch==2.13.0
PYTEST_ARGS ?= --durations=25
# The full flywheel (at most 15 minutes on 2 cores); DEMO_ARGS=--quick for the 5-minute run.
DEMO_ARGS ?=

.PHONY: install test test-fast demo bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# Unit tests only: no broker, no subprocesses.
test-fast: install
	$(PY) -m pytest -m "not integration and not e2e and not slow" $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/stillflow demo $(DEMO_ARGS)

bench: install
	$(PY) -m benchmarks

lint: install
	$(PY) -m ruff check stillflow streams trainer router sim tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
