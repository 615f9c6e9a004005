"""
The two environments meet: Airflow's (this interpreter in `make test`: Python 3.12, no TensorFlow)
and the step environment (Python 3.11, the TensorFlow stack). A step started in the wrong one, or
in a step environment holding another provider version, fails before it runs, saying what to do.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.step_env import has_tensorflow_stack, step_python

from airflow_ml_provider import __version__
from airflow_ml_provider.exceptions import StepEnvironmentError, StepFailed
from airflow_ml_provider.runners import InProcessRunner, PythonRunner

pytestmark = pytest.mark.integration

needs_airflow_env = pytest.mark.skipif(
    has_tensorflow_stack(),
    reason="Airflow's environment has no TensorFlow; this one has (make test runs it there)",
)


def _schema_spec(tmp_path: Path) -> dict[str, str]:
    data = tmp_path / "data.csv"
    data.write_text("age,income\n31,5.0\n47,7.5\n")
    return {"data_uri": str(data), "schema_uri": str(tmp_path / "schema.pbtxt")}


def _entrypoint(python: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    spec, result = tmp_path / "spec.json", tmp_path / "result.json"
    spec.write_text(json.dumps(_schema_spec(tmp_path)))
    return subprocess.run(
        [
            python,
            "-m",
            "airflow_ml_provider.ml",
            "infer_schema",
            "--spec",
            str(spec),
            "--result",
            str(result),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_step_environment_on_another_provider_version_is_refused_before_the_step(tmp_path: Path) -> None:
    done = _entrypoint(step_python(), tmp_path, "--provider-version", "9.9.9")
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()  # said once, nothing else ran
    assert line.startswith("error: the step environment ")
    assert f"holds airflow-ml-provider {__version__}, but Airflow's environment runs 9.9.9" in line
    assert "airflow-ml-provider[tensorflow,tuning]==9.9.9" in line
    assert not (tmp_path / "result.json").exists() and not (tmp_path / "schema.pbtxt").exists()


def test_the_same_provider_version_runs_the_step_in_the_step_environment(tmp_path: Path) -> None:
    done = _entrypoint(step_python(), tmp_path, "--provider-version", __version__)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "schema.pbtxt").is_file()
    assert json.loads((tmp_path / "result.json").read_text())["schema_uri"] == str(tmp_path / "schema.pbtxt")


@needs_airflow_env
def test_a_tensorflow_step_in_airflows_interpreter_names_the_step_environment(tmp_path: Path) -> None:
    runner = PythonRunner(python=sys.executable)
    with pytest.raises(StepFailed) as failed:
        runner.run("infer_schema", _schema_spec(tmp_path))
    message = str(failed.value)
    assert re.search(r"Step 'infer_schema' needs tensorflow_\w+ \(the TensorFlow stack\)", message), message
    assert f"{sys.executable} (Python {sys.version.split()[0]}) cannot import" in message
    assert "[ml_provider] step_python" in message and "make step-env" in message
    assert "Traceback" not in "\n".join(failed.value.last_lines)  # one error line, no traceback
    assert not (tmp_path / "schema.pbtxt").exists()


@needs_airflow_env
def test_a_tensorflow_step_placed_on_the_worker_of_airflows_environment_says_the_same(tmp_path: Path) -> None:
    with pytest.raises(
        StepEnvironmentError,
        match=r"needs tensorflow_\w+ \(the TensorFlow stack\).*\[ml_provider\] step_python",
    ):
        InProcessRunner().run("infer_schema", _schema_spec(tmp_path))
    assert not (tmp_path / "schema.pbtxt").exists()


@needs_airflow_env
def test_airflows_environment_has_no_tensorflow_stack_and_pandas_2() -> None:
    """The layout make test runs in: what a cluster on the official Airflow image has."""
    import numpy
    import pandas

    assert sys.version_info >= (3, 12)
    assert int(pandas.__version__.split(".")[0]) >= 2 and int(numpy.__version__.split(".")[0]) >= 2
    probe = "import sys; print(sys.version_info[:2] == (3, 11))"
    assert (
        subprocess.run(
            [step_python(), "-c", probe], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "True"
    )
