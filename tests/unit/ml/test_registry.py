"""The step registry: built-in names and ``module:function`` references resolve to functions."""

from __future__ import annotations

import pytest

from airflow_ml_provider.ml import basic
from airflow_ml_provider.ml.registry import BUILTIN_STEPS, resolve_step, step_reference

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
