"""User-style steps (``module:function``) that the tests run through the operators."""

from __future__ import annotations

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
