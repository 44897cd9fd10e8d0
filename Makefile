# Two commands for users: `make demo` and `make test`. Both set themselves up.
#
# Everything they run is installed from uv.lock (exact versions with hashes). uv itself is
# installed by pip from requirements/uv.txt (exact version with hashes) into .tools, so the
# machine needs nothing but Python 3.11+ and make.
PYTHON ?= python3
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
# One stamp per interpreter asked for: `make PYTHON=python3.12 test` rebuilds .venv with it,
# and a later plain `make test` goes back to python3.
STAMP := $(VENV)/.installed-$(notdir $(PYTHON))
# uv never downloads an interpreter: the machine's own Python is used.
export UV_PYTHON_DOWNLOADS := never
# Installed modules are compiled once, so that each worker process imports them quickly even
# where PYTHONDONTWRITEBYTECODE is set.
export UV_COMPILE_BYTECODE := 1
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: compile demo test lint typecheck unit coverage browser screenshot bench docs lock \
	test-latest clean

$(UV): requirements/uv.txt
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check \
		--require-hashes --no-deps -r requirements/uv.txt
	touch $(UV)

$(STAMP): $(UV) uv.lock pyproject.toml
	rm -f $(VENV)/.installed*
	$(UV) sync --locked --all-extras --python $(PYTHON) --quiet
	touch $(STAMP)

# The project's own modules are compiled before anything runs: with PYTHONDONTWRITEBYTECODE
# set, each worker would otherwise compile pypit anew, which doubles its start-up.
compile: $(STAMP)
	$(PY) -m compileall -q pypit tests examples benchmarks

demo: compile
	$(PY) -m examples.demo $(DEMO_ARGS)

test: lint typecheck unit

lint: $(STAMP)
	$(VENV)/bin/ruff check pypit tests benchmarks examples
	$(VENV)/bin/ruff format --check pypit tests benchmarks examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: compile browser
	$(PY) -m pytest

# The suite with coverage measured in the parent and in every worker process it starts
# (slower: about three times `make unit`).
coverage: compile browser
	$(PY) -m pytest --cov=pypit --cov-report=term:skip-covered --no-cov-on-fail

# The dashboard's page is tested in a real browser: Debian's chromium and its driver,
# installed when missing and the machine lets us (root with apt-get, as CI runs); elsewhere
# a note, and the test says what is missing (it fails under CI=true).
BROWSER := /usr/bin/chromium /usr/bin/chromedriver
browser:
	@if ! ls $(BROWSER) >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
				apt-get install -y -qq chromium chromium-driver; \
		else \
			echo "note: the dashboard's browser test needs chromium and chromium-driver" \
				"(apt-get install chromium chromium-driver)" >&2; \
		fi; \
	fi

# docs/dashboard.png, as the browser test sees the page.
screenshot: compile browser
	PYPIT_DASHBOARD_SCREENSHOT=docs/dashboard.png $(PY) -m pytest -q \
		tests/telemetry/test_dashboard.py -k page

# The benchmarks and the table of targets (docs/performance.md); BENCH_ARGS go to pytest.
bench: compile
	$(PY) -m benchmarks.run $(BENCH_ARGS)

docs: $(STAMP)
	$(PY) -m pypit.telemetry > docs/events.md.new
	mv docs/events.md.new docs/events.md

# Regenerate uv.lock after a change to pyproject.toml's dependencies, or to take newer versions
# (`make lock UPGRADE=1`).
lock: $(UV)
	$(UV) lock --python $(PYTHON) $(if $(UPGRADE),--upgrade)

# The suite against the newest release of every dependency, in a throwaway environment; the
# lock is left as it is. Not part of `make test`: run it before `make lock UPGRADE=1`.
test-latest: $(UV)
	rm -rf .venv-latest
	trap 'rm -rf .venv-latest' EXIT; \
	$(UV) venv --quiet --python $(PYTHON) .venv-latest && \
	$(UV) pip install --quiet --python .venv-latest/bin/python --upgrade --refresh \
		-e '.[prometheus,otel]' --group dev && \
	.venv-latest/bin/ruff check pypit tests benchmarks examples && \
	.venv-latest/bin/ruff format --check pypit tests benchmarks examples && \
	.venv-latest/bin/mypy && \
	.venv-latest/bin/python -m pytest -p no:cacheprovider

clean:
	rm -rf $(VENV) $(TOOLS) .venv-latest .pytest_cache .mypy_cache .ruff_cache .coverage \
		.hypothesis .benchmarks
