"""The two environments of the tests: Airflow's (this pytest, no TensorFlow) and the step environment.

`make test` runs the Airflow side in a Python 3.12 environment (`.venv`, pandas and numpy 2 or
newer, no TensorFlow) and the step layer's tests (marked ``steps``) in the Python 3.11 step
environment (`.venv-steps`, built by `make step-env`). Operators in the Airflow-side tests run their
steps in the step environment through ``[ml_provider] step_python``, as a platform team configures it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: the step environment `make step-env` builds
STEP_VENV = REPO / ".venv-steps"
#: the packages only the step environment has
TENSORFLOW_STACK = ("tensorflow", "tensorflow_data_validation", "tensorflow_model_analysis")


def has_tensorflow_stack() -> bool:
    """Whether this interpreter is a step environment (it can import the TensorFlow stack)."""
    return all(importlib.util.find_spec(name) is not None for name in TENSORFLOW_STACK)


def step_python() -> str:
    """
    The interpreter of the step environment.

    ``ML_PROVIDER_TEST_STEP_PYTHON`` if set, else this interpreter when it has the TensorFlow stack,
    else `.venv-steps/bin/python`.
    """
    given = os.environ.get("ML_PROVIDER_TEST_STEP_PYTHON")
    if given:
        return given
    if has_tensorflow_stack():
        return sys.executable
    return str(STEP_VENV / "bin" / "python")


def run_in_step_env(script: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """
    Run a Python script in the step environment (a model's TensorFlow flavour loads only there, as
    in a serving environment) and return what it printed; its stderr in the error when it fails.
    """
    done = subprocess.run(
        [step_python(), "-c", script],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout
