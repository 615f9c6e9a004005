"""Small built-in steps used by examples and tests of the step contract."""

from __future__ import annotations

import logging
import time
from typing import Any

from airflow_ml_provider.ml.specs.basic import DescribeDatasetSpec, EchoSpec

log = logging.getLogger(__name__)


def echo(spec: dict[str, Any]) -> dict[str, Any]:
    """
    Return the spec's ``payload`` unchanged; optionally log lines, sleep or fail first.

    :param spec: an :class:`~airflow_ml_provider.ml.specs.EchoSpec` as a JSON dict.
    """
    settings = EchoSpec.parse(spec)
    for line in settings.log_lines:
        log.info("%s", line)
    if settings.sleep_seconds:
        time.sleep(settings.sleep_seconds)
    if settings.fail_with:
        raise RuntimeError(settings.fail_with)
    result: dict[str, Any] = {"payload": settings.payload}
    if settings.metrics:
        result["mlflow"] = {"metrics": dict(settings.metrics)}
    return result


def describe_dataset(spec: dict[str, Any]) -> dict[str, Any]:
    """
    Summarise one dataset version: rows, columns, label balance and null fractions.

    The summary also comes back under ``mlflow.metrics`` so that the task's MLflow run records it.

    :param spec: a :class:`~airflow_ml_provider.ml.specs.DescribeDatasetSpec` as a JSON dict.
    """
    settings = DescribeDatasetSpec.parse(spec)
    from airflow_ml_provider.ml.datagen import read_version

    uri, label = settings.uri, settings.label
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
