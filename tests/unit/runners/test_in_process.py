"""InProcessRunner: the step runs in this interpreter; spec and result go through JSON."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from airflow_ml_provider.exceptions import StepFailed
from airflow_ml_provider.runners import InProcessRunner, PythonRunner, StepRunner, get_runner

pytestmark = pytest.mark.unit


def return_set(spec: dict[str, Any]) -> dict[str, Any]:
    return {"ok": 1, "nested": {"values": [1, {"bad": {1, 2}}]}}


def return_list(spec: dict[str, Any]) -> Any:
    return [1, 2]


def mutate_spec(spec: dict[str, Any]) -> dict[str, Any]:
    spec["payload"].append("changed")
    return {"payload": spec["payload"]}


HARMLESS = (
    "2026-12-07 07:41:40.847880: E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc:10575] Unable to "
    "register cuDNN factory: Attempting to register factory for plugin cuDNN when one has already been registered"
)


def write_native_stderr(spec: dict[str, Any]) -> dict[str, Any]:
    """What TensorFlow's C++ logging does: write to file descriptor 2, past sys.stderr."""
    import os

    os.write(2, f"{HARMLESS}\nE tensorflow/core/x.cc:1] a real error\n".encode())
    return {}


@pytest.mark.parametrize(
    "payload", [None, 1, 2.5, "text", [1, "a", None], {"nested": {"list": [1, 2, {"x": True}]}}]
)
def test_echo_round_trip(payload: Any) -> None:
    assert InProcessRunner().run("echo", {"payload": payload}) == {"payload": payload}


def test_echo_logs_into_the_step_logger(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    InProcessRunner().run("echo", {"log_lines": ["first line", "second line"]})
    assert [r.getMessage() for r in caplog.records if r.name == "airflow_ml_provider.ml.basic"] == [
        "first line",
        "second line",
    ]


def test_result_goes_through_json() -> None:
    result = InProcessRunner().run("echo", {"payload": {"tuple": (1, 2)}})
    assert result == {"payload": {"tuple": [1, 2]}}


def test_step_gets_a_copy_of_the_spec() -> None:
    spec = {"payload": ["original"]}
    assert InProcessRunner().run(f"{__name__}:mutate_spec", spec) == {"payload": ["original", "changed"]}
    assert spec == {"payload": ["original"]}


def test_step_failure_becomes_one_step_failed_with_the_steps_traceback() -> None:
    import traceback

    with pytest.raises(StepFailed, match="Step 'echo' failed in-process: RuntimeError: boom") as err:
        InProcessRunner().run("echo", {"fail_with": "boom"})
    assert isinstance(err.value.original, RuntimeError)
    assert str(err.value.original) == "boom"
    printed = "".join(traceback.format_exception(err.value))
    assert printed.count("Traceback") == 1 and "direct cause" not in printed  # no chained copy
    assert "in echo" in printed  # the frame of the step that raised
    assert err.value.step == "echo"
    assert err.value.last_lines == ["RuntimeError: boom"]


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ({"payload": object()}, "spec['payload']"),
        ({"payload": {"deep": [1, 2, {3, 4}]}}, "spec['payload']['deep'][2]"),
        ({"payload": {(1, 2): "tuple key"}}, "spec['payload'][(1, 2)]"),
    ],
)
def test_non_json_spec_raises_type_error_naming_the_key(spec: dict[str, Any], where: str) -> None:
    with pytest.raises(TypeError) as err:
        InProcessRunner().run("echo", spec)
    assert "Step 'echo'" in str(err.value)
    assert f"{where} is not" in str(err.value)


def test_circular_spec_raises_type_error() -> None:
    spec: dict[str, Any] = {"payload": {}}
    spec["payload"]["self"] = spec
    with pytest.raises(TypeError, match=r"spec\['payload'\]\['self'\] is not \(circular reference\)"):
        InProcessRunner().run("echo", spec)


def test_non_json_result_raises_type_error_naming_the_key() -> None:
    with pytest.raises(TypeError, match=r"result\['nested'\]\['values'\]\[1\]\['bad'\] is not \(set"):
        InProcessRunner().run(f"{__name__}:return_set", {})


def test_non_dict_result_raises_type_error() -> None:
    with pytest.raises(TypeError, match="must return a dict.*returned list"):
        InProcessRunner().run(f"{__name__}:return_list", {})


@pytest.mark.parametrize(("kind", "cls"), [("in_process", InProcessRunner), ("python", PythonRunner)])
def test_get_runner(kind: str, cls: type) -> None:
    runner = get_runner(kind)
    assert isinstance(runner, cls)
    assert isinstance(runner, StepRunner)


def test_get_runner_passes_kwargs() -> None:
    runner = get_runner("python", python="/opt/env/bin/python", timeout=3.0)
    assert isinstance(runner, PythonRunner)
    assert (runner.python, runner.timeout) == ("/opt/env/bin/python", 3.0)


def test_get_runner_unknown_kind_names_allowed_values() -> None:
    with pytest.raises(ValueError, match="Unknown runner 'docker'.*'in_process', 'python'"):
        get_runner("docker")


def test_known_harmless_native_error_lines_are_dropped_and_the_rest_passes(capfd) -> None:
    assert InProcessRunner().run(f"{__name__}:write_native_stderr", {}) == {}
    err = capfd.readouterr().err
    assert "a real error" in err  # anything else reaches stderr unchanged
    assert "Unable to register cuDNN factory" not in err  # tensorflow/tensorflow#62075, at every import
