"""Specs of the small built-in steps: ``echo`` and ``describe_dataset``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from airflow_ml_provider.ml.specs._base import Reader, StepSpec, is_number


@dataclass(frozen=True, kw_only=True)
class EchoSpec(StepSpec):
    """
    The spec of ``echo``, the step the tests of the step contract run (any other key is ignored).

    :param payload: any JSON value, returned unchanged.
    :param log_lines: lines logged at INFO first.
    :param sleep_seconds: seconds to sleep first (0: none).
    :param fail_with: raise ``RuntimeError`` with this message instead of returning.
    :param metrics: name -> number, returned under ``mlflow.metrics`` (logged to the task's run).
    """

    step = "echo"

    payload: Any = None
    log_lines: tuple[str, ...] = ()
    sleep_seconds: float = 0.0
    fail_with: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def _values(cls, spec: dict[str, Any]) -> dict[str, Any]:
        read = Reader(spec, cls.step)
        sleep = read.get("sleep_seconds", 0.0)
        if not is_number(sleep) or sleep < 0:
            raise read.error("sleep_seconds", f"must be a number >= 0, got {sleep!r}.")
        metrics = read.mapping("metrics")
        bad = {k: v for k, v in metrics.items() if not is_number(v)}
        if bad:
            raise read.error("metrics", f"must map names to numbers, got {bad!r}.")
        return {
            "payload": spec.get("payload"),
            "log_lines": read.str_list("log_lines") or (),
            "sleep_seconds": float(sleep),
            "fail_with": read.text("fail_with"),
            "metrics": {str(k): float(v) for k, v in metrics.items()},
        }


@dataclass(frozen=True, kw_only=True)
class DescribeDatasetSpec(StepSpec):
    """
    The spec of ``describe_dataset``: one dataset version to summarise (any other key is ignored).

    :param uri: the version directory (as ``generate_dataset`` writes it), required.
    :param label: the label column, for the positive rate.
    """

    step = "describe_dataset"

    uri: str
    label: str = "label"

    @classmethod
    def _values(cls, spec: dict[str, Any]) -> dict[str, Any]:
        read = Reader(spec, cls.step)
        uri = read.required_text("uri", "is required: the dataset version to read.")
        label = read.text("label", "label")
        return {"uri": uri, "label": label}
