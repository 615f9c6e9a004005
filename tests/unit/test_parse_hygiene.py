"""Parse hygiene: what a DAG file can import must not import the heavy ML stacks.

Airflow parses DAG files over and over, so the provider's hook, operator, link (and any future
sensor, trigger or plugin) modules and the example DAGs must import without TensorFlow, TFDV,
TFMA, tfx_bsl, MLflow, kubernetes, optuna or pandas. Each check runs in a fresh interpreter whose
first ``sys.meta_path`` finder raises ImportError for those packages; the child also checks that
none of them reached ``sys.modules`` by another way. The list of modules comes from
``get_provider_info()``, so a module added there is covered without touching this file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from airflow_ml_provider.get_provider_info import get_provider_info

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "airflow_ml_provider"
EXAMPLE_DAGS = sorted(p for p in (REPO_ROOT / "dags_examples").glob("*.py") if p.name != "__init__.py")

# The same list as ruff's banned-module-level-imports in pyproject.toml.
BANNED = (
    "tensorflow",
    "tensorflow_data_validation",
    "tensorflow_model_analysis",
    "tfx_bsl",
    "mlflow",
    "kubernetes",
    "optuna",
    "pandas",
)

# Runs in the child: block the banned packages, import each target, report per target.
CHILD = textwrap.dedent(
    """
    import importlib
    import importlib.abc
    import importlib.util
    import json
    import sys
    import traceback

    job = json.loads(sys.argv[1])
    BANNED = frozenset(job["banned"])


    class BlockHeavy(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname.partition(".")[0] in BANNED:
                raise ImportError(f"blocked import of {fullname!r} during parse", name=fullname)
            return None


    def banned_loaded():
        return sorted(n for n in sys.modules if n.partition(".")[0] in BANNED)


    preloaded = banned_loaded()
    sys.meta_path.insert(0, BlockHeavy())
    sys.path[:0] = job["sys_path"]
    results = {}
    for kind, target in job["targets"]:
        before = set(banned_loaded())
        error = None
        try:
            if kind == "module":
                importlib.import_module(target)
            else:
                name = "parse_hygiene_dag_" + str(len(results))
                spec = importlib.util.spec_from_file_location(name, target)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
        except BaseException:
            error = traceback.format_exc(limit=-8)
        leaked = sorted(set(banned_loaded()) - before)
        results[target] = {"error": error, "leaked": leaked}
    with open(job["out"], "w") as out:
        json.dump({"preloaded": preloaded, "results": results, "banned_at_exit": banned_loaded()}, out)
    # The child's own verdict: every target imported and no banned module is loaded.
    ok = not preloaded and not banned_loaded() and not any(r["error"] for r in results.values())
    sys.exit(0 if ok else 3)
    """
)


def _references(info: Any) -> Iterator[str]:
    """Every dotted name of this package anywhere in provider info (modules and class paths)."""
    if isinstance(info, dict):
        for value in info.values():
            yield from _references(value)
    elif isinstance(info, list):
        for value in info:
            yield from _references(value)
    elif isinstance(info, str) and info.startswith(f"{PACKAGE}."):
        yield info


def _module_of(reference: str) -> str:
    """The longest prefix of ``reference`` that is a module file or package of this repository."""
    parts = reference.split(".")
    for end in range(len(parts), 0, -1):
        path = REPO_ROOT.joinpath(*parts[:end])
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return ".".join(parts[:end])
    raise AssertionError(f"provider info names {reference!r}, which is not a module of this repository")


def provider_modules() -> list[str]:
    """Modules that provider info lists: hooks, operators, sensors, triggers, links, plugins ..."""
    return sorted({_module_of(ref) for ref in _references(get_provider_info())})


def run_blocked_imports(
    targets: list[tuple[str, str]], tmp: Path, extra_sys_path: Sequence[Path] = ()
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Import ``targets`` ((kind, name) with kind "module" or "file") in a fresh, blocked interpreter."""
    tmp.mkdir(parents=True, exist_ok=True)
    script = tmp / "blocked_import_child.py"
    script.write_text(CHILD)
    out = tmp / "result.json"
    job = {
        "banned": BANNED,
        "targets": targets,
        "sys_path": [str(REPO_ROOT), *map(str, extra_sys_path)],
        "out": str(out),
    }
    airflow_home = tmp / "airflow_home"
    airflow_home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
    }
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(job)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=120,
    )
    assert out.is_file(), (
        f"child crashed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc, json.loads(out.read_text())


MODULES = provider_modules()
TARGETS = [("module", m) for m in MODULES] + [("file", str(p)) for p in EXAMPLE_DAGS]


@pytest.fixture(scope="module")
def parse_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any]]:
    """One child imports every provider module and example DAG under the block."""
    proc, report = run_blocked_imports(TARGETS, tmp_path_factory.mktemp("parse_hygiene"))
    return proc.returncode, report


def test_targets_cover_provider_info():
    info = get_provider_info()
    sections = ("hooks", "operators", "sensors", "triggers")
    listed = {m for section in sections for e in info[section] for m in e["python-modules"]}
    listed |= {c["hook-class-name"].rsplit(".", 1)[0] for c in info["connection-types"]}
    listed |= {link.rsplit(".", 1)[0] for link in info["extra-links"]}
    assert listed <= set(MODULES)
    assert EXAMPLE_DAGS, "no example DAG files found in dags_examples/"


@pytest.mark.parametrize(
    ("kind", "target"),
    TARGETS,
    ids=[m if k == "module" else f"dag:{Path(m).name}" for k, m in TARGETS],
)
def test_imports_without_heavy_packages(parse_report, kind, target):
    _, report = parse_report
    assert not report["preloaded"], f"loaded before the block was installed: {report['preloaded']}"
    result = report["results"][target]
    if result["error"] is not None:
        pytest.fail(
            f"{target} does not import without {', '.join(BANNED)}:\n{result['error']}", pytrace=False
        )
    assert not result["leaked"], f"importing {target} loaded {result['leaked']}"


def test_child_verdict(parse_report):
    returncode, report = parse_report
    assert report["banned_at_exit"] == []
    assert returncode == 0


# -- the block itself can fail ------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "import pandas",
        "import mlflow.tracking",
        "from tensorflow import keras",
        "import tensorflow_data_validation as tfdv",
        "import optuna",
        "from kubernetes import client",
    ],
)
def test_block_rejects_top_level_heavy_import(tmp_path, statement):
    pkg = tmp_path / "canaries"
    pkg.mkdir()
    (pkg / "heavy_canary.py").write_text(f"{statement}\n")
    proc, report = run_blocked_imports([("module", "heavy_canary")], tmp_path / "run", [pkg])
    error = report["results"]["heavy_canary"]["error"]
    assert error is not None and "blocked import of" in error, error
    assert report["banned_at_exit"] == []
    assert proc.returncode != 0


def test_block_allows_guarded_import_and_catches_smuggled_module(tmp_path):
    """An ImportError-guarded import passes; a module planted in sys.modules is still caught."""
    pkg = tmp_path / "canaries"
    pkg.mkdir()
    (pkg / "guarded.py").write_text("try:\n    import pandas\nexcept ImportError:\n    pandas = None\n")
    (pkg / "smuggler.py").write_text(
        "import sys, types\nsys.modules['pandas'] = types.ModuleType('pandas')\n"
    )
    proc, report = run_blocked_imports(
        [("module", "guarded"), ("module", "smuggler")], tmp_path / "run", [pkg]
    )
    assert report["results"]["guarded"] == {"error": None, "leaked": []}
    assert report["results"]["smuggler"] == {"error": None, "leaked": ["pandas"]}
    assert proc.returncode != 0
