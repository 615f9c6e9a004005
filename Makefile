# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need first.
# uv comes from PyPI into .tools/ (nothing global); the environment is .venv/, resolved from uv.lock.

PYTHON ?= python3.11
UV := .tools/bin/uv
UV_VERSION := 0.13.9
VENV := .venv
SYNC_STAMP := $(VENV)/.synced
# The tests and the demo start hundreds of Python processes (Airflow components, steps, workers):
# let them cache bytecode (__pycache__, git-ignored) even where the shell says not to. Measured in CI:
# pytest 23 min with PYTHONDONTWRITEBYTECODE=1, 13.5 min without.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: reliability setup browser demo demo-serve test test-fast lint lint-imports typecheck docs dist bench benchmarks clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(SYNC_STAMP): $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras --group dev --python $(PYTHON)
	touch $(SYNC_STAMP)

setup: $(SYNC_STAMP)

# The UI test drives Debian's chromium with Playwright (no browser can be downloaded here).
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

browser: $(CHROMIUM)

demo: setup
	$(VENV)/bin/python scripts/demo.py

demo-serve: setup
	$(VENV)/bin/python scripts/demo.py --serve

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The layers of docs/architecture.md, the absence of import cycles and of Airflow in the step layer:
# the contracts in pyproject.toml ([tool.importlinter]).
lint-imports: setup
	$(VENV)/bin/lint-imports

typecheck: setup
	$(VENV)/bin/mypy

# The documentation site (mkdocs.yml), built strictly into site/: a broken link, a missing example
# snippet or an unresolvable API reference fails it.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# The full suite: lint, the import layers, types, the docs, then every test (unit, integration,
# slow, and the UI in chromium, which it installs from Debian's packages when missing), in
# PYTEST_WORKERS processes. --dist loadfile keeps each module in one process, in order, so that a
# module-scoped fixture (a trained model, a running Airflow cluster) is set up once;
# --no-loadscope-reorder keeps the order tests/conftest.py gives (the longest modules first), so
# that no long module starts last.
PYTEST_WORKERS ?= 2
test: lint lint-imports typecheck docs browser
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=30

# The fast subset: unit tests only (no servers, no Airflow DB), about half a minute.
test-fast: setup
	$(VENV)/bin/pytest -m unit

# The wheel and the constraints the images install with (docker/README.md).
dist: setup
	rm -rf dist
	$(UV) build --wheel -o dist
	$(UV) export --frozen --all-extras --no-dev --no-hashes --no-emit-project > dist/constraints.txt

# Every benchmark, one after the other, then docs/benchmarks.md rewritten with the figures and the
# machine (about an hour at the default settings; QUICK=1 for smaller ones).
bench: setup
	$(VENV)/bin/python benchmarks/run_all.py $(if $(QUICK),--quick)

benchmarks: bench

# The reliability and security scenarios docs/reliability.md names, then its results rewritten.
reliability: setup browser
	$(VENV)/bin/python scripts/reliability_report.py

clean:
	rm -rf .demo .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
