# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need first.
# uv comes from PyPI into .tools/ (nothing global). Two environments, both resolved from uv.lock, the
# layout a cluster runs (docs/install.md):
#   .venv/        Airflow's environment: Python 3.12, its own pandas and numpy (2 or newer), the
#                 provider with its kubernetes and tuning extras, the dev tools; no TensorFlow.
#   .venv-steps/  the step environment (`make step-env`): Python 3.11 with the TensorFlow stack (TF
#                 2.16, TFDV 1.16, TFMA 0.47: pandas<2, numpy<2). Every step runs there, through one
#                 setting: [ml_provider] step_python.

# The step environment's Python: 3.11, the only one the TensorFlow stack installs on.
PYTHON ?= python3.11
# Airflow's Python: 3.12 (the default of apache/airflow:3.3.2). The first that runs of python3.12 on
# PATH and pyenv's 3.12 (uv cannot download interpreters here).
AIRFLOW_PYTHON ?= $(firstword $(foreach p,python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12),$(shell $(p) -c 'import sys; print(sys.executable)' 2>/dev/null)))
UV := .tools/bin/uv
UV_VERSION := 0.13.9
VENV := .venv
SYNC_STAMP := $(VENV)/.synced
STEPS_VENV ?= .venv-steps
STEPS_STAMP := $(STEPS_VENV)/.synced
# The step environment's test tools (pytest for the step layer's tests); `STEP_GROUPS=` for none.
STEP_GROUPS ?= --group steps-test
# The tests and the demo start hundreds of Python processes (Airflow components, steps, workers):
# let them cache bytecode (__pycache__, git-ignored) even where the shell says not to. Measured in CI:
# pytest 23 min with PYTHONDONTWRITEBYTECODE=1, 13.5 min without.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: reliability setup step-env browser demo demo-serve test test-fast lint lint-imports typecheck docs dist bench benchmarks clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(SYNC_STAMP): $(UV) pyproject.toml uv.lock
	@test -n "$(AIRFLOW_PYTHON)" || { echo "Airflow's environment needs Python 3.12: install it (pyenv install 3.12) or give make AIRFLOW_PYTHON=/path/to/python3.12" >&2; exit 1; }
	$(UV) sync --frozen --all-extras --group dev --python $(AIRFLOW_PYTHON)
	touch $(SYNC_STAMP)

# The step environment, from the same lock: the provider (the same version as Airflow's, from this
# checkout), its tensorflow and tuning extras. Point Airflow at it: [ml_provider] step_python =
# $(STEPS_VENV)/bin/python (make test and make demo do).
$(STEPS_STAMP): $(UV) pyproject.toml uv.lock
	UV_PROJECT_ENVIRONMENT=$(STEPS_VENV) $(UV) sync --frozen --no-default-groups --extra tensorflow --extra tuning $(STEP_GROUPS) --python $(PYTHON)
	touch $(STEPS_STAMP)

step-env: $(STEPS_STAMP)

setup: $(SYNC_STAMP) $(STEPS_STAMP)

# The UI test drives Debian's chromium with Playwright (no browser can be downloaded here).
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

browser: $(CHROMIUM)

demo: setup
	$(VENV)/bin/python scripts/demo.py --step-python $(STEPS_VENV)/bin/python

demo-serve: setup
	$(VENV)/bin/python scripts/demo.py --step-python $(STEPS_VENV)/bin/python --serve

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
# PYTEST_WORKERS processes, in two parts: the step layer's tests (marked steps: they import the
# TensorFlow stack) in the step environment, then everything else in Airflow's environment, where
# operators run their steps in the step environment ([ml_provider] step_python, set by
# tests/conftest.py). --dist loadfile keeps each module in one process, in order, so that a
# module-scoped fixture (a trained model, a running Airflow cluster) is set up once;
# --no-loadscope-reorder keeps the order tests/conftest.py gives (the longest modules first), so
# that no long module starts last.
PYTEST_WORKERS ?= 2
PYTEST_ARGS := -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20
# The modules holding tests marked steps (the step layer's folders, and single tests elsewhere).
STEP_TESTS := tests/unit/ml tests/integration/ml tests/unit/test_hostile_input.py tests/integration/operators/test_step_placements.py
test: lint lint-imports typecheck docs browser
	$(STEPS_VENV)/bin/pytest -m steps $(PYTEST_ARGS) $(STEP_TESTS)
	$(VENV)/bin/pytest -m "not steps" $(PYTEST_ARGS)

# The fast subset: unit tests only (no servers, no Airflow DB), about a minute, in both environments.
test-fast: setup
	$(STEPS_VENV)/bin/pytest -m "unit and steps" -n $(PYTEST_WORKERS) $(STEP_TESTS)
	$(VENV)/bin/pytest -m "unit and not steps" -n $(PYTEST_WORKERS)

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
