"""The arguments of ``ChampionGuardOperator``, checked once rendered: the metric source, bounds, timing."""

from __future__ import annotations

import math
from typing import Any

from airflow_ml_provider.hooks.live_metric import CallableMetric, MetricSource, ServingRunMetric, SqlMetric

ON_NO_DATA = ("fail", "warn")
_UNSET = ("", "None", "none")


def _unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in _UNSET)


def _number(value: Any, name: str, *, integer: bool = False) -> float:
    """A rendered template ("20") or a number as a number; ValueError naming ``name`` otherwise."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if integer and number != int(number):
        raise ValueError(f"{name} must be a whole number, got {value!r}.")
    return number


def metric_source(op: Any) -> MetricSource:
    """The one metric source the operator's arguments name."""
    given = [
        name for name in ("metric_callable", "serving_experiment", "sql") if not _unset(getattr(op, name))
    ]
    if len(given) != 1:
        raise ValueError(
            f"Task {op.task_id!r}: give exactly one metric source (metric_callable, "
            f"serving_experiment or sql), got {', '.join(given) or 'none'}."
        )
    if given == ["metric_callable"]:
        return CallableMetric(str(op.metric_callable))
    if given == ["serving_experiment"]:
        return ServingRunMetric(
            str(op.metric),
            str(op.serving_experiment),
            op.serving_run_filter,
            op.mlflow_conn_id,
        )
    return SqlMetric(str(op.sql), op.sql_conn_id or "")


def check_arguments(op: Any) -> dict[str, Any]:
    """The rendered arguments, checked and as numbers; ValueError naming the bad one."""
    for name in ("model_name", "metric", "alias", "previous_alias"):
        value = getattr(op, name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"Task {op.task_id!r}: {name} must be a non-empty name, got {value!r}.")
    source = metric_source(op)
    lower = None if _unset(op.lower_bound) else _number(op.lower_bound, "lower_bound")
    upper = None if _unset(op.upper_bound) else _number(op.upper_bound, "upper_bound")
    if lower is None and upper is None:
        raise ValueError(
            f"Task {op.task_id!r}: give lower_bound (a lower value is a breach: AUC, accuracy) "
            "or upper_bound (a higher value is a breach: error rate, latency), or both."
        )
    if lower is not None and upper is not None and lower >= upper:
        raise ValueError(f"Task {op.task_id!r}: lower_bound {lower:g} must be below upper_bound {upper:g}.")
    window = _number(op.window, "window")
    interval = _number(op.check_interval, "check_interval")
    needed = int(_number(op.consecutive_breaches, "consecutive_breaches", integer=True))
    if window <= 0 or interval <= 0 or needed < 1:
        raise ValueError(
            f"Task {op.task_id!r}: window and check_interval must be positive and "
            f"consecutive_breaches at least 1, got {op.window!r}, {op.check_interval!r}, "
            f"{op.consecutive_breaches!r}."
        )
    if (needed - 1) * interval > window:
        raise ValueError(
            f"Task {op.task_id!r}: {needed} consecutive checks every {interval:g} s do not fit in "
            f"a window of {window:g} s: the guard could never roll back. Lengthen the window or "
            "check more often."
        )
    if op.on_no_data not in ON_NO_DATA:
        raise ValueError(f"Task {op.task_id!r}: on_no_data={op.on_no_data!r} is not one of fail, warn.")
    return {
        "source": source,
        "lower_bound": lower,
        "upper_bound": upper,
        "window": window,
        "check_interval": interval,
        "consecutive_breaches": needed,
    }


def guarded_version_argument(value: Any) -> str | None:
    """``version`` as a registry version string, None when unset; ValueError otherwise."""
    if _unset(value):
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ValueError(f"version must be a model version number (1, 2, ...) or unset, got {value!r}.")
    return str(int(text))
