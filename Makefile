# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need first.
# uv comes from PyPI into .tools/ (nothing global); the environment is .venv/, resolved from uv.lock.

PYTHON ?= python3.11
UV := .tools/bin/uv
UV_VERSION := 0.13.9
VENV := .venv
SYNC_STAMP := $(VENV)/.synced

.PHONY: setup demo demo-serve test test-fast lint typecheck benchmarks clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(SYNC_STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras --group dev --python $(PYTHON)
	touch $(SYNC_STAMP)

setup: $(SYNC_STAMP)

demo: setup
	$(VENV)/bin/python scripts/demo.py

demo-serve: setup
	$(VENV)/bin/python scripts/demo.py --serve

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

# The full suite: lint, types, then every test (unit, integration, slow).
test: lint typecheck
	$(VENV)/bin/pytest

# The fast subset: unit tests only (no servers, no Airflow DB), about half a minute.
test-fast: setup
	$(VENV)/bin/pytest -m unit

benchmarks: setup
	$(VENV)/bin/python benchmarks/parse_overhead.py
	$(VENV)/bin/python benchmarks/tracking_overhead.py

clean:
	rm -rf .demo .pytest_cache .mypy_cache .ruff_cache
