"""User-style steps (``module:function``) that the tests run through the operators."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def fail_once(spec: dict[str, Any]) -> dict[str, Any]:
    """Fail on the first call (leaving a marker file), succeed on the next."""
    marker = Path(spec["marker"])
    if not marker.exists():
        marker.write_text("failed once")
        raise RuntimeError(f"first try fails on purpose ({marker})")
    return {"mlflow": {"metrics": {"recovered": 1.0}}, "attempt": 2}


def always_fail(spec: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError(spec.get("message", "this step always fails"))


# -- the MLflow outage test (tests/integration/test_mlflow_outage.py) ----------------------------
# dag.test() runs steps and callbacks in the test's own process, so they share this module.
OUTAGE: dict[str, Any] = {}


def stop_mlflow_once(spec: dict[str, Any]) -> dict[str, Any]:
    """On the first try, stop the MLflow server in the middle of the task, then return a result."""
    marker = Path(spec["marker"])
    if not marker.exists():
        marker.write_text("stopped the server")
        OUTAGE["server"].stop()
        OUTAGE["stopped_at"] = time.monotonic()
    return {"payload": 1, "mlflow": {"metrics": {"after_outage": 1.0}}}


def restart_mlflow(context: Any) -> None:
    """on_retry_callback: the task gave up on the dead server; bring it back before the retry."""
    OUTAGE["failed_at"] = time.monotonic()
    OUTAGE["server"].start()
