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


def describe_dataset(spec: dict[str, Any]) -> dict[str, Any]:
    """
    Summarise one dataset version: rows, columns, label balance and null fractions.

    Spec keys: ``uri`` (a version directory written by ``generate_dataset``, required) and
    ``label`` (default ``"label"``). The summary also comes back under ``mlflow.metrics`` so that
    the task's MLflow run records it.
    """
    from airflow_ml_provider.ml.datagen import read_version

    uri = spec.get("uri")
    if not uri:
        raise ValueError("describe_dataset: spec key 'uri' is required: the dataset version to read.")
    label = str(spec.get("label", "label"))
    frame = read_version(uri)
    metrics: dict[str, float] = {"rows": float(len(frame)), "columns": float(len(frame.columns))}
    if label in frame.columns and len(frame):
        metrics["positive_rate"] = float(frame[label].astype(float).mean())
    for column in frame.columns:
        nulls = float(frame[column].isna().mean()) if len(frame) else 0.0
        if nulls:
            metrics[f"null_fraction.{column}"] = nulls
    log.info("Version %s: %d rows, %d columns", uri, len(frame), len(frame.columns))
    return {"uri": str(uri), "columns": [str(c) for c in frame.columns], "mlflow": {"metrics": metrics}}
