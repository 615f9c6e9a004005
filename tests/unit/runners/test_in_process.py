"""InProcessRunner: the step runs in this interpreter; spec and result go through JSON."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest

from airflow_ml_provider.exceptions import StepFailed
from airflow_ml_provider.runners import InProcessRunner, PythonRunner, StepRunner, get_runner
from airflow_ml_provider.runners.in_process import native_line_level

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
INFO_LINE = "2026-12-07 08:11:07.687819: I tensorflow/core/util/port.cc:113] oneDNN custom operations are on."
WARNING_LINE = (
    "2026-12-07 08:11:11.135773: W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] TF-TRT Warning: "
    "Could not find TensorRT"
)


def write_native_stderr(spec: dict[str, Any]) -> dict[str, Any]:
    """What TensorFlow's C++ logging does: write to file descriptor 2, past sys.stderr."""
    import os

    lines = [
        HARMLESS,
        "E tensorflow/core/x.cc:1] a real error",
        INFO_LINE,
        WARNING_LINE,
        "a plain line from a library",
    ]
    os.write(2, "".join(f"{line}\n" for line in lines).encode())
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


def test_native_stderr_lines_are_logged_at_their_own_level(capfd, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="airflow_ml_provider.stderr")
    assert InProcessRunner().run(f"{__name__}:write_native_stderr", {}) == {}
    levels = {r.getMessage(): r.levelname for r in caplog.records if r.name == "airflow_ml_provider.stderr"}
    assert levels == {
        HARMLESS: "DEBUG",  # tensorflow/tensorflow#62075, at every import
        "E tensorflow/core/x.cc:1] a real error": "ERROR",
        INFO_LINE: "INFO",
        WARNING_LINE: "WARNING",
        "a plain line from a library": "WARNING",
    }
    assert capfd.readouterr().err == ""  # nothing reaches the task's stderr (logged at ERROR by Airflow)


@pytest.mark.parametrize(
    ("line", "level"),
    [
        (HARMLESS, logging.DEBUG),
        (INFO_LINE, logging.INFO),
        (WARNING_LINE, logging.WARNING),
        ("I0000 00:00:1765094400.123456   12 port.cc:113] oneDNN custom operations are on.", logging.INFO),
        ("E1207 08:00:00.123456   12 cuda_executor.cc:1] a real error", logging.ERROR),
        ("F tensorflow/core/x.cc:1] Check failed", logging.CRITICAL),
        ("Traceback (most recent call last):", logging.WARNING),
        ("To enable the following instructions: AVX2 FMA, in other operations, rebuild", logging.WARNING),
    ],
)
def test_native_line_level(line: str, level: int) -> None:
    assert native_line_level(line) == level


def test_native_stderr_goes_to_the_real_stderr_when_logging_would_write_it_there_again(
    capfd, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="airflow_ml_provider.stderr")
    console = os.fdopen(2, "w", closefd=False)
    handler = logging.StreamHandler(console)  # a console handler on descriptor 2
    logger = logging.getLogger("airflow_ml_provider.stderr")
    logger.addHandler(handler)
    try:
        assert InProcessRunner().run(f"{__name__}:write_native_stderr", {}) == {}
    finally:
        logger.removeHandler(handler)
        console.close()
    err = capfd.readouterr().err
    assert "a real error" in err and INFO_LINE in err  # everything else reaches stderr unchanged, once
    assert err.count("a real error") == 1
    assert "Unable to register cuDNN factory" not in err
    assert not [r for r in caplog.records if r.name == "airflow_ml_provider.stderr"]


def write_progress_bar(spec: dict[str, Any]) -> dict[str, Any]:
    os.write(2, b"\rDownloading artifacts:   0%| | 0/2\rDownloading artifacts: 100%|#| 2/2\r\n")
    return {}


def test_a_progress_bar_is_logged_in_its_last_state(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="airflow_ml_provider.stderr")
    InProcessRunner().run(f"{__name__}:write_progress_bar", {})
    assert [r.getMessage() for r in caplog.records if r.name == "airflow_ml_provider.stderr"] == [
        "Downloading artifacts: 100%|#| 2/2"
    ]


# --- The environment of an in-process step --------------------------------------------------------


def read_environment(spec: dict[str, Any]) -> dict[str, Any]:
    import time

    first = {name: os.environ.get(name) for name in spec["names"]}
    time.sleep(spec.get("sleep_seconds", 0))
    return {"first": first, "then": {name: os.environ.get(name) for name in spec["names"]}}


def fail_reading_environment(spec: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError(f"seen {os.environ.get('AIRFLOW_ML_TEST_SET')}")


def test_env_is_set_while_the_step_runs_and_restored_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_ML_TEST_KEPT", "before")
    monkeypatch.delenv("AIRFLOW_ML_TEST_SET", raising=False)
    names = ["AIRFLOW_ML_TEST_KEPT", "AIRFLOW_ML_TEST_SET", "AIRFLOW_ML_TEST_OTHER"]
    monkeypatch.setenv("AIRFLOW_ML_TEST_OTHER", "untouched")
    runner = InProcessRunner(env={"AIRFLOW_ML_TEST_KEPT": "during", "AIRFLOW_ML_TEST_SET": "new"})
    seen = runner.run(f"{__name__}:read_environment", {"names": names})
    assert seen["first"] == {
        "AIRFLOW_ML_TEST_KEPT": "during",
        "AIRFLOW_ML_TEST_SET": "new",
        "AIRFLOW_ML_TEST_OTHER": "untouched",
    }
    assert os.environ["AIRFLOW_ML_TEST_KEPT"] == "before"
    assert "AIRFLOW_ML_TEST_SET" not in os.environ
    assert os.environ["AIRFLOW_ML_TEST_OTHER"] == "untouched"


def test_env_is_restored_when_the_step_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_ML_TEST_SET", raising=False)
    runner = InProcessRunner(env={"AIRFLOW_ML_TEST_SET": "during"})
    with pytest.raises(StepFailed, match="RuntimeError: seen during"):
        runner.run(f"{__name__}:fail_reading_environment", {})
    assert "AIRFLOW_ML_TEST_SET" not in os.environ


def test_steps_with_env_take_turns_in_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    monkeypatch.delenv("AIRFLOW_ML_TEST_SET", raising=False)
    spec = {"names": ["AIRFLOW_ML_TEST_SET"], "sleep_seconds": 0.3}
    results: dict[str, dict[str, Any]] = {}

    def run(value: str) -> None:
        runner = InProcessRunner(env={"AIRFLOW_ML_TEST_SET": value})
        results[value] = runner.run(f"{__name__}:read_environment", spec)

    threads = [threading.Thread(target=run, args=(value,)) for value in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    for value in ("a", "b"):  # each step saw its own value from start to end
        assert results[value]["first"] == results[value]["then"] == {"AIRFLOW_ML_TEST_SET": value}
    assert "AIRFLOW_ML_TEST_SET" not in os.environ


@pytest.mark.parametrize("env", [{"NAME": 1}, {"NAME": None}, {1: "value"}])
def test_env_must_be_strings(env: dict[Any, Any]) -> None:
    with pytest.raises(TypeError, match="names and values must be str"):
        InProcessRunner(env=env)


def test_get_runner_passes_env_to_the_in_process_runner() -> None:
    runner = get_runner("in_process", env={"AIRFLOW_ML_WORKER": "w-1"})
    assert isinstance(runner, InProcessRunner)
    assert runner.env == {"AIRFLOW_ML_WORKER": "w-1"}


# --- The execution core lives in the step layer ------------------------------------------------


def test_the_runner_reexports_the_step_layers_execution_names() -> None:
    from airflow_ml_provider.ml import execute
    from airflow_ml_provider.runners import in_process

    for name in (
        "HARMLESS_NATIVE_LINE",
        "json_round_trip",
        "native_line_level",
        "as_result_dict",
        "native_log",
    ):
        assert getattr(in_process, name) is getattr(execute, name)


def test_execute_step_lets_the_steps_own_error_through() -> None:
    from airflow_ml_provider.ml.execute import execute_step

    assert execute_step("echo", {"payload": [1]}) == {"payload": [1]}
    with pytest.raises(RuntimeError, match="^boom$"):
        execute_step("echo", {"fail_with": "boom"})
