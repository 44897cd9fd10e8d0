# Two commands for users: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,prometheus,otel]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m examples.demo $(DEMO_ARGS)

test: lint typecheck unit

lint: $(STAMP)
	$(VENV)/bin/ruff check pypit tests benchmarks examples
	$(VENV)/bin/ruff format --check pypit tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks.run

docs: $(STAMP)
	$(PY) -c 'from pypit.telemetry._catalog import render_markdown as r; print(r(), end="")' > docs/events.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .hypothesis .benchmarks
