"""
Model freshness: how long a dataset version took to reach each stage of the loop.

For a DAG run started by a dataset version, the time from the version's completion (its
``completed_at``: the marker file's modification time; for a version named in ``dag_run.conf``
without it, read from the storage) to

* ``run_started``: the DAG run's start,
* ``trained``: the training task's success,
* ``promoted``: the champion alias moving to the new model,
* ``decided``: the decision, whichever it was: promoted, or not (anomalies in the data, a model
  that is not blessed, a promotion refused),

is logged on the DAG run's MLflow parent run as the metric ``freshness.version_to_<stage>_seconds``
(and the tag ``freshness.decision``), and sent to Airflow's metrics (StatsD or OpenTelemetry,
whichever Airflow is configured with) as the timer ``ml_provider.freshness.version_to_<stage>``
tagged with ``dag_id``. Recording never fails a task.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol

from airflow_ml_provider.vocabulary import FRESHNESS_STAGES, METRIC_FRESHNESS, TAG_FRESHNESS_DECISION

if TYPE_CHECKING:
    from airflow_ml_provider.hooks.mlflow import MlflowHook

log = logging.getLogger(__name__)


class TaskRun(Protocol):
    """What freshness reads of a task's run (a ``tracking.TaskRun``, which calls this module)."""

    @property
    def hook(self) -> MlflowHook: ...

    @property
    def parent_run_id(self) -> str: ...


STATS_NAME = "ml_provider.freshness.version_to_{stage}"
# Completion times read from the storage, per (DAG run, version, uri): looked up, and explained, once.
_FROM_SOURCE: dict[tuple[str, str, str], tuple[str | None, str]] = {}


def _parse(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def version_completed_at(context: Any) -> datetime | None:
    """
    When the DAG run's dataset version was completed; None for a run no version started.

    A version named in ``dag_run.conf`` without ``completed_at`` is looked up in its storage (its
    completion marker's time); when that cannot be told either, one line says why no freshness is
    recorded.
    """
    from airflow_ml_provider.versions import triggering_version

    version = triggering_version(context) or {}
    if not version or version.get("completed_at"):
        return _parse(version.get("completed_at"))
    run_id = str(getattr(context.get("dag_run"), "run_id", ""))
    key = (run_id, str(version.get("version")), str(version.get("uri")))
    if key not in _FROM_SOURCE:
        from airflow_ml_provider.hooks.completeness import source_completed_at

        _FROM_SOURCE[key] = source_completed_at(version)
        completed, why = _FROM_SOURCE[key]
        if completed is None:
            log.info(
                "Freshness is not recorded for dataset version %s: it has no completed_at and %s.",
                key[1],
                why,
            )
    return _parse(_FROM_SOURCE[key][0])


def record(
    context: Any,
    run: TaskRun,
    stage: str,
    *,
    decision: str | None = None,
    at: datetime | None = None,
) -> float | None:
    """
    Record how long the run's dataset version took to reach ``stage``; return the seconds.

    :param stage: one of :data:`FRESHNESS_STAGES`.
    :param decision: for the stage that decides: ``"promoted"`` or ``"not promoted: <why>"``;
        the ``decided`` figure is recorded with it.
    :param at: when the stage was reached (default now).
    """
    if stage not in FRESHNESS_STAGES:
        raise ValueError(f"freshness stage {stage!r} is not one of {', '.join(FRESHNESS_STAGES)}")
    try:
        completed = version_completed_at(context)
        if completed is None:
            return None
        seconds = max(0.0, ((at or datetime.now(timezone.utc)) - completed).total_seconds())
        stages = [stage] + (["decided"] if decision and stage != "decided" else [])
        metrics = {METRIC_FRESHNESS.format(stage=s): seconds for s in stages}
        tags = {TAG_FRESHNESS_DECISION: decision} if decision else {}
        run.hook.log_batch(run.parent_run_id, metrics=metrics, tags=tags)
        _emit(context, stages, seconds)
        log.info(
            "Freshness: the dataset version reached %s %.1f s after it was completed%s.",
            " and ".join(stages),
            seconds,
            f" ({decision})" if decision else "",
        )
        return seconds
    except Exception:
        log.warning("Could not record the freshness of stage %s", stage, exc_info=True)
        return None


def record_run_started(context: Any, run: TaskRun) -> None:
    """Record ``run_started`` once per DAG run (the first task of the run does it)."""
    try:
        if version_completed_at(context) is None:
            return
        parent = run.hook.client.get_run(run.parent_run_id)
        if METRIC_FRESHNESS.format(stage="run_started") in parent.data.metrics:
            return
        dag_run = context.get("dag_run")
        started = _parse(getattr(dag_run, "start_date", None)) or _parse(getattr(dag_run, "queued_at", None))
        record(context, run, "run_started", at=started)
    except Exception:
        log.warning("Could not record when the DAG run started", exc_info=True)


def _emit(context: Any, stages: list[str], seconds: float) -> None:
    try:
        from airflow.sdk.observability.stats import timing
    except ImportError:  # pragma: no cover - Airflow without the SDK's stats module
        return
    ti = context.get("ti")
    tags = {"dag_id": str(getattr(ti, "dag_id", ""))}
    for stage in stages:
        timing(STATS_NAME.format(stage=stage), timedelta(seconds=seconds), tags=tags)
