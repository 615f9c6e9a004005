"""Wait for a training gang on Kubernetes (Indexed Job + headless Service) to finish."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent
from asgiref.sync import sync_to_async

from airflow_ml_provider.hooks.kubernetes import (
    MAX_BACKOFF_SECONDS,
    MIN_ERROR_TIMEOUT_SECONDS,
    ErrorPatience,
    GangWatch,
    TrainingGangHook,
)

__all__ = ["MAX_BACKOFF_SECONDS", "MIN_ERROR_TIMEOUT_SECONDS", "TrainingGangTrigger"]

# self.log of a trigger is Airflow's structlog logger; the module logger goes where the
# triggerer's (and pytest's caplog) logging goes.
log = logging.getLogger(__name__)


class TrainingGangTrigger(BaseTrigger):
    """
    Poll a training gang's Job and pods until it succeeds, fails, or is not admitted or started in time.

    Each poll is :meth:`TrainingGangHook.status`, run in a worker thread, judged by
    :class:`~airflow_ml_provider.hooks.kubernetes.GangWatch`, the policy the operator's synchronous
    :meth:`TrainingGangHook.wait` follows too. Yields exactly one event,
    ``{"status", "name", "namespace", "message"}``, and ends:

    - ``success``: the Job completed;
    - ``failed``: a worker failed or the Job failed (the message names the pod, its completion
      index, exit code and reason), or the Job was deleted outside Airflow;
    - ``start_timeout``: ``start_timeout`` seconds after the Job started (its ``status.startTime``,
      reset when Kueue admits it; else ``started_at``) not every worker is running yet; the
      message says which pods wait and why (Unschedulable, ImagePullBackOff ...). A gang only
      trains when all its workers run, so a partial gang is no progress. A gang that is restarting
      a worker (per-index retries) or queued is not pending;
    - ``admission_timeout``: the Job has been suspended, waiting for Kueue to admit it, for
      ``admission_timeout`` seconds (from its suspension: again after a preemption); the message
      names the LocalQueue and Kueue's reason;
    - ``error``: the Kubernetes API refused the connection's identity (403, at once), or API
      errors went on without a single successful poll for ``error_timeout`` seconds.

    API errors are logged and retried after ``poll_interval * 2**n`` seconds (at most 60). The
    default ``error_timeout``, ``max(300, 5 * poll_interval)``, outlasts an API server restart;
    the gang's pods keep training meanwhile, and the start timeout is only judged on a
    successful poll.

    :param name: the gang's name (Job and Service).
    :param namespace: its namespace.
    :param workers: the gang size.
    :param kubernetes_conn_id: the Kubernetes connection (cncf provider).
    :param started_at: when the gang was launched, Unix seconds; None for when ``run()`` starts.
    :param start_timeout: seconds after the Job's start by which every worker must run; None waits
        for ever.
    :param poll_interval: seconds between polls.
    :param error_timeout: seconds of uninterrupted API errors before an ``error`` event; None for
        the default.
    :param admission_timeout: seconds a suspended Job (a Kueue LocalQueue's) may wait for
        admission; None waits for ever.
    """

    def __init__(
        self,
        name: str,
        namespace: str,
        workers: int,
        kubernetes_conn_id: str | None = TrainingGangHook.default_conn_name,
        started_at: float | None = None,
        start_timeout: float | None = 600.0,
        poll_interval: float = 10.0,
        error_timeout: float | None = None,
        admission_timeout: float | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.namespace = namespace
        self.workers = workers
        self.kubernetes_conn_id = kubernetes_conn_id
        self.started_at = started_at
        self.start_timeout = start_timeout
        self.poll_interval = poll_interval
        self.error_timeout = error_timeout
        self.admission_timeout = admission_timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "name": self.name,
                "namespace": self.namespace,
                "workers": self.workers,
                "kubernetes_conn_id": self.kubernetes_conn_id,
                "started_at": self.started_at,
                "start_timeout": self.start_timeout,
                "poll_interval": self.poll_interval,
                "error_timeout": self.error_timeout,
                "admission_timeout": self.admission_timeout,
            },
        )

    @property
    def effective_error_timeout(self) -> float:
        """The ``error_timeout`` in force: the given one, else ``max(300, 5 * poll_interval)``."""
        return ErrorPatience(self.poll_interval, self.error_timeout).timeout

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = TrainingGangHook(self.kubernetes_conn_id)
        # thread_sensitive=False: a call hanging on an unreachable API server must not hold up the
        # one shared thread other triggers' sync_to_async calls run in.
        poll = sync_to_async(hook.status, thread_sensitive=False)
        watch = GangWatch(
            self.name,
            self.namespace,
            started_at=time.time() if self.started_at is None else float(self.started_at),
            start_timeout=self.start_timeout,
            poll_interval=self.poll_interval,
            error_timeout=self.error_timeout,
            admission_timeout=self.admission_timeout,
            kubernetes_conn_id=self.kubernetes_conn_id,
            log=log,
        )
        while True:
            try:
                gang = await poll(self.name, self.namespace, self.workers, log=log)
            except Exception as err:
                event = watch.failed(err)
            else:
                event = watch.polled(gang)
            if event is not None:
                yield TriggerEvent(event)
                return
            await asyncio.sleep(watch.delay)
