"""The step registry: built-in names and ``module:function`` references resolve to functions."""

from __future__ import annotations

import sys

import pytest

from airflow_ml_provider.ml import basic
from airflow_ml_provider.ml.registry import (
    BUILTIN_STEPS,
    check_reference,
    resolve_step,
    step_reference,
    user_references,
)

pytestmark = pytest.mark.unit


def test_builtin_echo_resolves_to_its_function() -> None:
    assert resolve_step("echo") is basic.echo


@pytest.mark.parametrize("name", sorted(BUILTIN_STEPS))
def test_every_builtin_name_has_a_module_function_reference(name: str) -> None:
    module, sep, func = step_reference(name).partition(":")
    assert sep == ":" and module.startswith("airflow_ml_provider.ml.") and func.isidentifier()


@pytest.mark.parametrize(
    "reference",
    ["airflow_ml_provider.ml.basic:echo", "steps_for_tests:always_fail", "os.path:join"],
)
def test_module_function_reference_resolves(reference: str) -> None:
    module_name, _, func_name = reference.partition(":")
    module = __import__(module_name, fromlist=[func_name])
    assert resolve_step(reference) is getattr(module, func_name)


@pytest.mark.parametrize(
    "step",
    ["no_such_step", "pkg.mod:", ":func", "pkg..mod:func", "pkg.mod:not-an-identifier", "1pkg:func", ""],
)
def test_bad_reference_raises_value_error_naming_the_step(step: str) -> None:
    with pytest.raises(ValueError, match="Unknown step") as err:
        resolve_step(step)
    assert repr(step) in str(err.value)
    assert "package.module:function" in str(err.value)


def test_missing_function_raises_value_error_naming_the_step() -> None:
    with pytest.raises(ValueError, match=r"'airflow_ml_provider.ml.basic:nope'.*no function 'nope'"):
        resolve_step("airflow_ml_provider.ml.basic:nope")


def test_missing_module_raises_import_error_with_the_hint() -> None:
    with pytest.raises(ImportError, match="cannot import module 'no_such_pkg.mod'") as err:
        resolve_step("no_such_pkg.mod:func")
    assert "installed in the interpreter that runs the step" in str(err.value)
    assert isinstance(err.value.__cause__, ModuleNotFoundError)


# -- the cheap check that user code resolves (before any worker imports TensorFlow) -------------


@pytest.mark.parametrize(
    "reference",
    [
        "airflow_ml_provider.ml.basic:echo",
        "airflow_ml_provider.ml.training.demo:run_fn",
        "steps_for_tests:always_fail",
        "os.path:join",  # bound by an import at the module's top level
        "json:loads",
    ],
)
def test_check_reference_passes_what_resolves(reference: str) -> None:
    assert check_reference(reference) is None


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("steps_for_tests:does_not_exist", "defines no 'does_not_exist' at its top level"),
        ("no_such_module_4711:run_fn", "no module named 'no_such_module_4711'"),
        ("no_such_pkg_4711.model:run_fn", "no module named 'no_such_pkg_4711'"),
        (
            "airflow_ml_provider.ml.no_such_module:run_fn",
            "no module named 'airflow_ml_provider.ml.no_such_module'",
        ),
    ],
)
def test_check_reference_names_the_problem(reference: str, problem: str) -> None:
    assert problem in (check_reference(reference) or "")


def test_check_reference_does_not_import_the_module(tmp_path, monkeypatch) -> None:
    (tmp_path / "heavy_user_module_4711.py").write_text(
        "raise RuntimeError('imported')\n"
        "if True:\n    def run_fn(ctx):\n        return None\n"
        "try:\n    from os import sep as other\nexcept ImportError:\n    other = None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert check_reference("heavy_user_module_4711:run_fn") is None
    assert check_reference("heavy_user_module_4711:other") is None
    assert "defines no 'nope'" in (check_reference("heavy_user_module_4711:nope") or "")
    assert "heavy_user_module_4711" not in sys.modules


@pytest.mark.parametrize("source", ["from os.path import *\n", "def __getattr__(name):\n    return print\n"])
def test_check_reference_passes_what_only_running_the_module_can_tell(tmp_path, monkeypatch, source) -> None:
    (tmp_path / "dynamic_user_module_4711.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert check_reference("dynamic_user_module_4711:anything") is None


def test_check_reference_reports_a_syntax_error(tmp_path, monkeypatch) -> None:
    (tmp_path / "broken_user_module_4711.py").write_text("def run_fn(ctx:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "syntax error" in (check_reference("broken_user_module_4711:run_fn") or "")


@pytest.mark.parametrize(
    ("step", "spec", "expected"),
    [
        ("echo", {"run_fn": "a:b"}, []),
        ("train_model", {"run_fn": "pkg.model:run_fn"}, [("run_fn", "pkg.model:run_fn")]),
        ("tune", {"objective": {"kind": "function", "ref": "m:f"}}, [("objective", "m:f")]),
        ("tune", {"objective": "nonsense"}, []),
        ("my_steps:work", {}, [("step", "my_steps:work")]),
    ],
)
def test_user_references_names_the_user_code_of_a_step(step, spec, expected) -> None:
    assert user_references(step, spec) == expected
