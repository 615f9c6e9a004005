"""The run model: one MLflow parent run per DAG run, one nested run per task instance.

A task's run is found again by its tags on retry, so a retried task resumes its own run instead
of opening a second one. The parent run is bound to the DAG run through :meth:`MlflowHook.claim`,
so mapped tasks that start at the same moment still share one parent.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.exceptions import MlflowConnectionError
from airflow_ml_provider.vocabulary import (
    METRIC_TASK_DURATION,
    TAG_DAG_ID,
    TAG_DAG_RUN_KEY,
    TAG_MAP_INDEX,
    TAG_PARENT_RUN,
    TAG_ROLE,
    TAG_RUN_ID,
    TAG_TASK_ID,
    TAG_TASK_STATE,
    TAG_TI_KEY,
    TAG_TRY_NUMBER,
    XCOM_EXPERIMENT_ID,
    XCOM_RUN_ID,
    XCOM_RUN_URL,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_ml_provider.hooks.mlflow import MlflowHook

log = logging.getLogger(__name__)

TAG_PARENT = TAG_PARENT_RUN  # its earlier name, which benchmarks/ imports

# Buffered metrics are sent in one log_batch once this many are waiting.
METRIC_FLUSH_THRESHOLD = 1000


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class TaskIdentity:
    """Who is logging: the task instance, as Airflow names it."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1
    try_number: int = 1
    max_tries: int = 0

    @classmethod
    def from_context(cls, context: Context) -> TaskIdentity:
        ti = context["ti"]
        map_index = getattr(ti, "map_index", -1)
        return cls(
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            task_id=ti.task_id,
            map_index=-1 if map_index is None else int(map_index),
            try_number=int(getattr(ti, "try_number", 1) or 1),
            max_tries=int(getattr(ti, "max_tries", 0) or 0),
        )

    @property
    def dag_run_key(self) -> str:
        return _digest(self.dag_id, self.run_id)

    @property
    def ti_key(self) -> str:
        return _digest(self.dag_id, self.run_id, self.task_id, str(self.map_index))

    @property
    def task_run_name(self) -> str:
        return self.task_id if self.map_index < 0 else f"{self.task_id}[{self.map_index}]"

    @property
    def is_last_try(self) -> bool:
        return self.try_number > self.max_tries

    def dag_run_tags(self) -> dict[str, str]:
        return {
            TAG_DAG_ID: self.dag_id,
            TAG_RUN_ID: self.run_id,
            TAG_ROLE: "dag_run",
            TAG_DAG_RUN_KEY: self.dag_run_key,
        }

    def task_tags(self) -> dict[str, str]:
        return {
            TAG_DAG_ID: self.dag_id,
            TAG_RUN_ID: self.run_id,
            TAG_TASK_ID: self.task_id,
            TAG_MAP_INDEX: str(self.map_index),
            TAG_TRY_NUMBER: str(self.try_number),
            TAG_ROLE: "task",
            TAG_TI_KEY: self.ti_key,
            TAG_DAG_RUN_KEY: self.dag_run_key,
        }


@dataclass
class TaskRun:
    """
    The MLflow run of one task instance, with buffered logging.

    ``log_metric`` and ``log_metrics`` only buffer; the buffer goes out in ``log_batch`` requests
    when it is full, on :meth:`flush`, and when the task's run ends.
    """

    hook: MlflowHook
    experiment_id: str
    parent_run_id: str
    run_id: str
    resumed: bool = False
    _metrics: list[tuple[str, float, int]] = field(default_factory=list, repr=False)
    _params: dict[str, Any] = field(default_factory=dict, repr=False)
    _tags: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str | None:
        return self.hook.run_url(self.experiment_id, self.run_id)

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        self._metrics.append((key, float(value), int(step)))
        if len(self._metrics) >= METRIC_FLUSH_THRESHOLD:
            self.flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        for key, value in metrics.items():
            self.log_metric(key, value, step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._params.update(params)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._tags.update(tags)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self.hook.client.log_artifact(self.run_id, local_path, artifact_path)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        self.hook.client.log_artifacts(self.run_id, local_dir, artifact_path)

    def flush(self) -> None:
        if not (self._metrics or self._params or self._tags):
            return
        metrics, self._metrics = self._metrics, []
        params, self._params = self._params, {}
        tags, self._tags = self._tags, {}
        self.hook.log_batch(self.run_id, metrics=metrics, params=params, tags=tags)


def ensure_parent_run(hook: MlflowHook, experiment_id: str, identity: TaskIdentity) -> str:
    """Return the id of the DAG run's parent run, creating it once across concurrent tasks."""
    claim_key = f"dag_run/{experiment_id}/{identity.dag_run_key}"
    existing = hook.read_claim(claim_key)
    if existing:
        return existing
    description = f"Parent run of DAG run {identity.dag_id}/{identity.run_id}"
    # A claim can be garbage-collected (mlflow gc) while its parent run lives on. A run found by
    # its tags may also be another task's candidate that is about to lose: so it is claimed too,
    # never used as it is.
    found = hook.find_runs(experiment_id, {TAG_DAG_RUN_KEY: identity.dag_run_key, TAG_ROLE: "dag_run"})
    if found:
        return hook.claim(claim_key, str(found[0].info.run_id), description=description)
    candidate = hook.client.create_run(experiment_id, tags=identity.dag_run_tags(), run_name=identity.run_id)
    candidate_id = str(candidate.info.run_id)
    winner = hook.claim(claim_key, candidate_id, description=description)
    if winner != candidate_id:
        log.info("Another task created the parent run %s first; discarding %s", winner, candidate_id)
        hook.client.delete_run(candidate_id)
    return winner


def start_task_run(
    hook: MlflowHook,
    identity: TaskIdentity,
    *,
    experiment_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> TaskRun:
    """Start the task instance's run, or resume it when an earlier try created it."""
    experiment_id = hook.get_or_create_experiment(experiment_name or identity.dag_id)
    parent_id = ensure_parent_run(hook, experiment_id, identity)
    hook.client.update_run(parent_id, status="RUNNING")
    found = hook.find_runs(experiment_id, {TAG_TI_KEY: identity.ti_key, TAG_ROLE: "task"})
    all_tags = {**identity.task_tags(), TAG_PARENT: parent_id, **(tags or {})}
    if found:
        run_id = str(found[0].info.run_id)
        if len(found) > 1:
            log.warning(
                "Task %s has %d MLflow runs; resuming the oldest, %s",
                identity.task_run_name,
                len(found),
                run_id,
            )
        hook.client.update_run(run_id, status="RUNNING")
        hook.log_batch(run_id, tags=all_tags)
        run = TaskRun(hook, experiment_id, parent_id, run_id, resumed=True)
    else:
        created = hook.client.create_run(experiment_id, tags=all_tags, run_name=identity.task_run_name)
        run = TaskRun(hook, experiment_id, parent_id, str(created.info.run_id))
    return run


def end_task_run(run: TaskRun, identity: TaskIdentity, *, success: bool) -> None:
    """Flush and close the task's run; the parent follows the task that ended last."""
    try:
        run.flush()
    finally:
        status = "FINISHED" if success else "FAILED"
        run.hook.client.set_terminated(run.run_id, status=status)
        if success or identity.is_last_try:
            run.hook.client.set_terminated(run.parent_run_id, status=status)


def _record_dataset_versions(run: TaskRun, context: Context) -> None:
    """Tag the parent run with the dataset versions that started the DAG run (see versions.py)."""
    from airflow_ml_provider.versions import run_versions

    try:
        # Resolved once per task (memoized): the task's fields and checks read the same versions.
        tags = run_versions(context).mlflow_tags()
        if tags:
            run.hook.log_batch(run.parent_run_id, tags=tags)
    except Exception:
        # Recording lineage must not fail the task; the task's own run still says what it read.
        log.warning(
            "Could not record the dataset versions on parent run %s", run.parent_run_id, exc_info=True
        )


@contextmanager
def tracked_task(
    context: Context,
    *,
    mlflow_conn_id: str = "mlflow_default",
    experiment_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[TaskRun]:
    """
    Run the body inside the task instance's MLflow run.

    Pushes the run id and its UI address to XCom (``mlflow_run_id``, ``mlflow_run_url``), ends
    the run FINISHED or FAILED with the body, and resumes the same run when the task is retried or
    comes back from a deferral (a deferral leaves the run RUNNING).
    Usable from any task: ``with tracked_task(get_current_context()) as run: run.log_metric(...)``.
    """
    from airflow.sdk.exceptions import AirflowSkipException, TaskDeferred

    from airflow_ml_provider.hooks.mlflow import MlflowHook

    hook = MlflowHook(mlflow_conn_id)
    identity = TaskIdentity.from_context(context)
    hook.check_server()
    started = time.monotonic()
    try:
        run = start_task_run(hook, identity, experiment_name=experiment_name, tags=tags)
    except MlflowConnectionError:
        raise
    except Exception as err:
        raise MlflowConnectionError(
            f"Could not start the MLflow run of task {identity.task_run_name} on {hook.describe()}: "
            f"{type(err).__name__}: {err}"
        ) from err
    _record_dataset_versions(run, context)
    from airflow_ml_provider.freshness import record_run_started

    record_run_started(context, run)
    log.info(
        "MLflow run %s (%s) of task %s, parent run %s%s",
        run.run_id,
        "resumed" if run.resumed else "new",
        identity.task_run_name,
        run.parent_run_id,
        f": {run.url}" if run.url else "",
    )
    ti = context["ti"]
    ti.xcom_push(key=XCOM_RUN_ID, value=run.run_id)
    ti.xcom_push(key=XCOM_EXPERIMENT_ID, value=run.experiment_id)
    # Both keys always exist, empty when there is nothing to open: the extra links read them when the
    # task ends, and reading a missing XCom logs an ERROR ("XCom not found") in the task's log.
    ti.xcom_push(key=XCOM_RUN_URL, value=run.url or "")
    from airflow_ml_provider.vocabulary import XCOM_CACHE_SOURCE_URL

    ti.xcom_push(key=XCOM_CACHE_SOURCE_URL, value="")  # a cache hit replaces it with its source run
    try:
        yield run
    except TaskDeferred:
        # Waiting in the triggerer: the run stays RUNNING and is resumed by the task's next method.
        run.flush()
        raise
    except AirflowSkipException:
        # A deliberate skip (a gate that short-circuits) is not a failure of the task's work.
        run.set_tags({TAG_TASK_STATE: "skipped"})
        end_task_run(run, identity, success=True)
        raise
    except BaseException:
        try:
            end_task_run(run, identity, success=False)
        except Exception:
            # The task's own error matters more than a failure to record it.
            log.warning("Could not mark MLflow run %s FAILED", run.run_id, exc_info=True)
        raise
    run.log_metric(METRIC_TASK_DURATION, time.monotonic() - started)
    end_task_run(run, identity, success=True)
