"""
No call in the provider's own code that runs what a file or a string says: no unpickling, no
unsafe YAML, no eval/exec, no shell. Read from the syntax tree of every module, so a new call
fails this test wherever it is added.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[2] / "airflow_ml_provider"
# module -> functions that load or run untrusted content
BANNED_CALLS = {
    "pickle": {"load", "loads", "Unpickler"},
    "cloudpickle": {"load", "loads"},
    "dill": {"load", "loads"},
    "marshal": {"load", "loads"},
    "shelve": {"open"},
    "yaml": {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"},
    "os": {"system", "popen"},
}
BANNED_BUILTINS = {"eval", "exec", "compile", "__import__"}
BANNED_IMPORTS = {"pickle", "cloudpickle", "dill", "marshal", "shelve"}


def _findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where}: imports {n}" for n in names if n.split(".")[0] in BANNED_IMPORTS]
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in BANNED_BUILTINS:
            found.append(f"{where}: calls {func.id}()")
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            if func.attr in BANNED_CALLS.get(func.value.id, set()):
                found.append(f"{where}: calls {func.value.id}.{func.attr}()")
        for keyword in node.keywords:  # subprocess.run(..., shell=True) and friends
            if keyword.arg == "shell" and not (
                isinstance(keyword.value, ast.Constant) and keyword.value.value is False
            ):
                found.append(f"{where}: passes shell=")
    return found


def test_the_provider_never_unpickles_evals_or_runs_a_shell():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 50  # the scan saw the package
    findings = [f for path in modules for f in _findings(path)]
    assert findings == []


def test_the_scan_finds_what_it_looks_for(tmp_path):
    """The checker itself: each banned form in a sample module is reported."""
    path = tmp_path / "sample.py"
    path.write_text(
        "import pickle\nimport yaml\nimport subprocess\n"
        "pickle.loads(b'')\nyaml.load('a: 1')\nyaml.safe_load('a: 1')\neval('1')\n"
        "subprocess.run('ls', shell=True)\nsubprocess.run(['ls'], shell=False)\n"
    )
    assert [f.split(": ", 1)[1] for f in _findings(path)] == [
        "imports pickle",
        "calls pickle.loads()",
        "calls yaml.load()",
        "calls eval()",
        "passes shell=",
    ]
