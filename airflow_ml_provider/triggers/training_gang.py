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
    GangStatus,
    KubernetesPermissionError,
    TrainingGangHook,
    describe_api_error,
)

# self.log of a trigger is Airflow's structlog logger; the module logger goes where the
# triggerer's (and pytest's caplog) logging goes.
log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 60.0
# API errors are ridden out for at least this long (an API server restart, a control-plane upgrade).
MIN_ERROR_TIMEOUT_SECONDS = 300.0


class TrainingGangTrigger(BaseTrigger):
    """
    Poll a training gang's Job and pods until it succeeds, fails or does not start in time.

    Each poll is :meth:`TrainingGangHook.status`, run in a worker thread. Yields exactly one
    event, ``{"status", "name", "namespace", "message"}``, and ends:

    - ``success``: the Job completed;
    - ``failed``: a worker failed or the Job failed (the message names the pod, its completion
      index, exit code and reason), or the Job was deleted outside Airflow;
    - ``start_timeout``: ``start_timeout`` seconds after ``started_at`` not every worker is
      running yet; the message says which pods wait and why (Unschedulable, ImagePullBackOff ...).
      A gang only trains when all its workers run, so a partial gang is no progress;
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
    :param start_timeout: seconds after ``started_at`` by which every worker must run; None waits
        for ever.
    :param poll_interval: seconds between polls.
    :param error_timeout: seconds of uninterrupted API errors before an ``error`` event; None for
        the default.
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
            },
        )

    @property
    def effective_error_timeout(self) -> float:
        if self.error_timeout is not None:
            return float(self.error_timeout)
        return max(MIN_ERROR_TIMEOUT_SECONDS, 5 * float(self.poll_interval))

    def _backoff(self, failures: int) -> float:
        interval = float(self.poll_interval)
        return max(interval, min(interval * 2**failures, MAX_BACKOFF_SECONDS))

    def _event(self, status: str, message: str) -> TriggerEvent:
        return TriggerEvent(
            {"status": status, "name": self.name, "namespace": self.namespace, "message": message}
        )

    def _verdict(self, gang: GangStatus, started_at: float) -> TriggerEvent | None:
        """The final event for ``gang``, or None to keep polling."""
        if gang.phase == "succeeded":
            return self._event("success", gang.message)
        if gang.phase == "failed":
            return self._event("failed", gang.message)
        if gang.phase == "missing":
            return self._event(
                "failed",
                f"Job {self.namespace}/{self.name} was deleted outside Airflow before it was seen to "
                "finish (kubectl delete, a deleted namespace, or its ttlSecondsAfterFinished ran out "
                "while no triggerer watched); its workers' logs are gone with it.",
            )
        if gang.phase == "pending" and self.start_timeout is not None:
            deadline = started_at + float(self.start_timeout)
            if time.time() >= deadline:
                return self._event(
                    "start_timeout",
                    f"The training gang did not fully start within {self.start_timeout:g} s of its launch: "
                    f"{gang.message}",
                )
        return None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = TrainingGangHook(self.kubernetes_conn_id)
        # thread_sensitive=False: a call hanging on an unreachable API server must not hold up the
        # one shared thread other triggers' sync_to_async calls run in.
        poll = sync_to_async(hook.status, thread_sensitive=False)
        started_at = time.time() if self.started_at is None else float(self.started_at)
        errors = _ErrorStreak()
        last: tuple[str, str] | None = None
        while True:
            try:
                gang = await poll(self.name, self.namespace, self.workers)
            except KubernetesPermissionError as err:
                log.error("Training gang %s/%s: %s", self.namespace, self.name, err)
                yield self._event("error", str(err))
                return
            except Exception as err:
                if errors.add() >= self.effective_error_timeout:
                    message = (
                        f"The Kubernetes API failed on every poll of Job {self.namespace}/{self.name} for "
                        f"{errors.duration():.0f} s ({errors.count} tries through connection "
                        f"{self.kubernetes_conn_id!r}); last error: {describe_api_error(err)}"
                    )
                    log.error("%s", message)
                    yield self._event("error", message)
                    return
                delay = min(self._backoff(errors.count), self.effective_error_timeout - errors.duration())
                log.warning(
                    "Polling training gang %s/%s failed (%d in a row): %s. Next try in %.1f s.",
                    self.namespace,
                    self.name,
                    errors.count,
                    describe_api_error(err),
                    delay,
                )
                await asyncio.sleep(max(delay, 0.0))
                continue
            if errors.count:
                log.info(
                    "Polling training gang %s/%s works again after %d error(s).",
                    self.namespace,
                    self.name,
                    errors.count,
                )
                errors = _ErrorStreak()
            event = self._verdict(gang, started_at)
            if event is not None:
                log.info(
                    "Training gang %s/%s: %s: %s",
                    self.namespace,
                    self.name,
                    event.payload["status"],
                    event.payload["message"],
                )
                yield event
                return
            if (gang.phase, gang.message) != last:
                log.info("Training gang %s/%s is %s: %s", self.namespace, self.name, gang.phase, gang.message)
                last = (gang.phase, gang.message)
            await asyncio.sleep(float(self.poll_interval))


class _ErrorStreak:
    """Consecutive failed polls: how many, and for how long."""

    def __init__(self) -> None:
        self.count = 0
        self.since: float | None = None

    def add(self) -> float:
        """Count one more failure; return the streak's duration in seconds."""
        self.count += 1
        if self.since is None:
            self.since = time.monotonic()
        return self.duration()

    def duration(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since
