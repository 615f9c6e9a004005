"""Small built-in steps used by examples and tests of the step contract."""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


def echo(spec: dict[str, Any]) -> dict[str, Any]:
    """
    Return the spec's ``payload`` unchanged; optionally log lines, sleep or fail first.

    Spec keys (all optional): ``payload`` (any JSON value), ``log_lines`` (list of str logged at
    INFO), ``sleep_seconds`` (float), ``fail_with`` (str: raise RuntimeError with this message),
    ``metrics`` (dict of name -> float, returned under ``mlflow.metrics``).
    """
    for line in spec.get("log_lines", []):
        log.info("%s", line)
    if spec.get("sleep_seconds"):
        time.sleep(float(spec["sleep_seconds"]))
    if spec.get("fail_with"):
        raise RuntimeError(str(spec["fail_with"]))
    result: dict[str, Any] = {"payload": spec.get("payload")}
    if spec.get("metrics"):
        result["mlflow"] = {"metrics": {str(k): float(v) for k, v in spec["metrics"].items()}}
    return result
