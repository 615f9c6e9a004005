"""Wait for a warm step server: a step starts cold while its interpreter's server still imports."""

from __future__ import annotations

import time

from airflow_ml_provider.runners import PythonRunner
from airflow_ml_provider.runners.warm import server_ready


def wait_until_warm(python: str, within: float = 300.0) -> None:
    """
    Start the interpreter's warm step server if there is none and wait until it takes steps.

    :param python: the step interpreter.
    :param within: seconds to wait for the server's imports.
    """
    runner = PythonRunner(python=python, warm=True)
    runner.run("echo", {})  # starts the server when there is none (this step runs cold)
    deadline = time.monotonic() + within
    while not server_ready(python) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server_ready(python), (
        f"the warm step server of {python} did not finish its imports in {within:.0f} s"
    )
