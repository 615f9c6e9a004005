"""
Waiting for a training gang on Kubernetes, without the waiting: what each status means
(:func:`job_verdict`), how long API errors are ridden out (:class:`ErrorPatience`) and the poll
policy (:class:`GangWatch`), one for the synchronous
:meth:`~airflow_ml_provider.hooks.kubernetes.TrainingGangHook.wait` and the deferrable trigger;
with the API errors they meet (:class:`KubernetesPermissionError`, a 403, names the RBAC rules).

Public names are re-exported by :mod:`airflow_ml_provider.hooks.kubernetes`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from airflow_ml_provider.exceptions import MLProviderError
from airflow_ml_provider.hooks._gang_status import GangStatus

# What the launcher needs in the gang's namespace; docs/training.md shows the Role built from it.
RBAC_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("batch", "jobs", ("create", "get", "delete")),
    ("", "services", ("create", "get", "delete")),
    ("", "pods", ("list",)),
    ("", "pods/log", ("get",)),
)
# Optional, for a gang in a Kueue LocalQueue (queue_name): with them the task log says why Kueue has
# not admitted the Job (its Workload's conditions); without them (403), or without Kueue (404), it
# names the LocalQueue only. Never required: no 403 on them fails a task.
OPTIONAL_RBAC_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("kueue.x-k8s.io", "workloads", ("get", "list")),
)
RBAC_DOC = "docs/training.md#kubernetes-rbac"
MAX_BACKOFF_SECONDS = 60.0
# API errors are ridden out for at least this long (an API server restart, a control-plane upgrade).
MIN_ERROR_TIMEOUT_SECONDS = 300.0


def rules_text(rules: tuple[tuple[str, str, tuple[str, ...]], ...]) -> str:
    """``jobs.batch: create, get, delete; pods: list``."""
    return "; ".join(
        f"{resource + ('.' + group if group else '')}: {', '.join(verbs)}" for group, resource, verbs in rules
    )


class KubernetesPermissionError(MLProviderError):
    """The Kubernetes API refused a call (403): the connection's identity lacks an RBAC rule."""

    def __init__(self, verb: str, resource: str, namespace: str, detail: str) -> None:
        self.verb = verb
        self.resource = resource
        self.namespace = namespace
        super().__init__(
            f"Kubernetes refused to {verb} {resource} in namespace {namespace!r} (403 Forbidden: "
            f"{detail}). The identity of the Kubernetes connection needs a Role in that namespace "
            f"allowing {rules_text(RBAC_RULES)} (optionally also {rules_text(OPTIONAL_RBAC_RULES)}, "
            f"for Kueue's reasons in the task log), bound to it with a RoleBinding; see the RBAC "
            f"Role in {RBAC_DOC}."
        )


def _api_exception() -> type[Exception]:
    from kubernetes.client.exceptions import ApiException

    return ApiException


def status_of(err: Exception) -> int | None:
    """The HTTP status of a Kubernetes API error; None for any other exception."""
    return getattr(err, "status", None) if isinstance(err, _api_exception()) else None


def server_message(err: Exception) -> str:
    """The ``message`` of the Status body Kubernetes sent with an error, else the HTTP reason."""
    import json

    body = getattr(err, "body", None)
    try:
        message = json.loads(body).get("message") if body else None
    except (ValueError, AttributeError):
        message = None
    return str(message or getattr(err, "reason", None) or err).strip()


def describe_api_error(err: BaseException) -> str:
    """``ServiceException: 500 etcdserver: request timed out`` (status and the API server's message)."""
    if isinstance(err, Exception) and status_of(err) is not None:
        return f"{type(err).__name__}: {status_of(err)} {server_message(err)}"
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__


def start_timeout_text(start_timeout: float) -> str:
    """The start of a ``start_timeout`` event's message."""
    return f"The training gang did not fully start within {start_timeout:g} s of its launch: "


def admission_timeout_text(admission_timeout: float) -> str:
    """The start of an ``admission_timeout`` event's message."""
    return f"The training gang was not admitted by Kueue within {admission_timeout:g} s: "


def job_verdict(
    status: GangStatus,
    *,
    name: str,
    namespace: str,
    started_at: float,
    now: float,
    start_timeout: float | None,
    admission_timeout: float | None = None,
    queued_since: float | None = None,
) -> tuple[str, str] | None:
    """
    What a gang's status means to whoever waits for it: ``(event status, message)``, or None to poll on.

    The event status is ``success``, ``failed`` (a worker or the Job failed, or the Job is gone),
    ``start_timeout`` (still ``pending`` ``start_timeout`` seconds after its start; a gang only
    trains when all its workers run, so a partial gang is no progress) or ``admission_timeout``
    (``queued``, suspended waiting for Kueue, for ``admission_timeout`` seconds). A gang that is
    ``queued`` or ``restarting`` is not pending: the start timeout does not apply to it.

    Times are the API server's (the Job's) and this machine's clock: they should agree to a few
    seconds, which the timeouts of minutes this is for do not notice.

    :param status: the gang's :class:`GangStatus`.
    :param name: the gang's name.
    :param namespace: its namespace.
    :param started_at: when it was launched, Unix seconds; the start timeout counts from the Job's
        ``status.startTime`` instead when Kubernetes has set it (it resets it when it resumes a
        suspended Job, so a wait for Kueue does not count).
    :param now: the time of ``status``, Unix seconds.
    :param start_timeout: seconds by which every worker must run; None waits for ever.
    :param admission_timeout: seconds a ``queued`` gang may wait; None waits for ever.
    :param queued_since: when the queue wait began, Unix seconds; None for ``status.queued_since``
        (the Job's Suspended condition, else its creation), else ``started_at``.
    """
    if status.phase == "succeeded":
        return "success", status.message
    if status.phase == "failed":
        return "failed", status.message
    if status.phase == "missing":
        return (
            "failed",
            f"Job {namespace}/{name} was deleted outside Airflow before it was seen to "
            "finish (kubectl delete, a deleted namespace, or its ttlSecondsAfterFinished ran out "
            "while no triggerer watched); its workers' logs are gone with it.",
        )
    if status.phase == "pending" and start_timeout is not None:
        since = status.start_time if status.start_time is not None else started_at
        if now >= since + float(start_timeout):
            return "start_timeout", start_timeout_text(start_timeout) + status.message
    if status.phase == "queued" and admission_timeout is not None:
        since = next(t for t in (queued_since, status.queued_since, started_at) if t is not None)
        if now >= since + float(admission_timeout):
            return "admission_timeout", admission_timeout_text(admission_timeout) + status.message
    return None


class ErrorPatience:
    """
    How long API errors in a row are ridden out, and how long to wait before the next try.

    :param poll_interval: seconds between polls; the backoff starts from it.
    :param error_timeout: seconds of errors in a row before giving up; None for
        ``max(300, 5 * poll_interval)``, which outlasts an API server restart.
    :param clock: monotonic seconds.
    """

    def __init__(
        self,
        poll_interval: float,
        error_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.poll_interval = float(poll_interval)
        self.timeout = (
            float(error_timeout)
            if error_timeout is not None
            else max(MIN_ERROR_TIMEOUT_SECONDS, 5 * self.poll_interval)
        )
        self.count = 0
        self._since: float | None = None
        self._clock = clock

    def add(self) -> float:
        """Count one more error; the streak's duration in seconds."""
        self.count += 1
        if self._since is None:
            self._since = self._clock()
        return self.duration()

    def duration(self) -> float:
        """Seconds since the first error of the streak; 0 without one."""
        return 0.0 if self._since is None else self._clock() - self._since

    def exhausted(self) -> bool:
        """The streak has lasted ``timeout`` seconds: give up."""
        return self.count > 0 and self.duration() >= self.timeout

    def next_delay(self) -> float:
        """``poll_interval * 2**count``, at most 60 s (never below the interval) and the patience left."""
        backoff = max(self.poll_interval, min(self.poll_interval * 2**self.count, MAX_BACKOFF_SECONDS))
        return max(0.0, min(backoff, self.timeout - self.duration()))

    def reset(self) -> None:
        """A poll worked: the next error starts a new streak."""
        self.count = 0
        self._since = None


class GangWatch:
    """
    The policy of waiting for a gang, without the waiting: what each poll's outcome means.

    Feed it every poll's :class:`GangStatus` (:meth:`polled`) or exception (:meth:`failed`);
    each returns the final event, ``{"status", "name", "namespace", "message"}``, or None, and
    then :attr:`delay` is how long to sleep before the next poll. A 403
    (:class:`KubernetesPermissionError`) is an ``error`` at once; other errors are retried with
    :class:`ErrorPatience` until it runs out. Logs phase changes at INFO and poll errors at WARNING.

    :param log: the logger the lines go to.
    :param kubernetes_conn_id: the connection, named in the message when the API stays unreachable.

    The other parameters are :meth:`TrainingGangHook.wait`'s.
    """

    def __init__(
        self,
        name: str,
        namespace: str,
        *,
        started_at: float,
        start_timeout: float | None,
        poll_interval: float,
        error_timeout: float | None = None,
        admission_timeout: float | None = None,
        kubernetes_conn_id: str | None = None,
        log: Any,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.started_at = float(started_at)
        self.start_timeout = start_timeout
        self.admission_timeout = admission_timeout
        self.poll_interval = float(poll_interval)
        self.kubernetes_conn_id = kubernetes_conn_id
        self.log = log
        self.patience = ErrorPatience(poll_interval, error_timeout)
        self.delay = self.poll_interval
        self._last: tuple[str, str] | None = None

    def event(self, status: str, message: str) -> dict[str, Any]:
        return {"status": status, "name": self.name, "namespace": self.namespace, "message": message}

    def polled(self, gang: GangStatus, now: float | None = None) -> dict[str, Any] | None:
        """The final event for a successful poll (``now``: its Unix time), or None to poll again."""
        where = (self.namespace, self.name)
        if self.patience.count:
            self.log.info(
                "Polling training gang %s/%s works again after %d error(s).", *where, self.patience.count
            )
            self.patience.reset()
        verdict = job_verdict(
            gang,
            name=self.name,
            namespace=self.namespace,
            started_at=self.started_at,
            now=time.time() if now is None else now,
            start_timeout=self.start_timeout,
            admission_timeout=self.admission_timeout,
        )
        if verdict is not None:
            self.log.info("Training gang %s/%s: %s: %s", *where, *verdict)
            return self.event(*verdict)
        if (gang.phase, gang.message) != self._last:
            self.log.info("Training gang %s/%s is %s: %s", *where, gang.phase, gang.message)
            self._last = (gang.phase, gang.message)
        self.delay = self.poll_interval
        return None

    def failed(self, err: Exception) -> dict[str, Any] | None:
        """The ``error`` event for a poll that raised ``err``, or None to retry after :attr:`delay`."""
        where = (self.namespace, self.name)
        if isinstance(err, KubernetesPermissionError):
            self.log.error("Training gang %s/%s: %s", *where, err)
            return self.event("error", str(err))
        self.patience.add()
        if self.patience.exhausted():
            message = (
                f"The Kubernetes API failed on every poll of Job {self.namespace}/{self.name} for "
                f"{self.patience.duration():.0f} s ({self.patience.count} tries through connection "
                f"{self.kubernetes_conn_id!r}); last error: {describe_api_error(err)}"
            )
            self.log.error("%s", message)
            return self.event("error", message)
        self.delay = self.patience.next_delay()
        self.log.warning(
            "Polling training gang %s/%s failed (%d in a row): %s. Next try in %.1f s.",
            *where,
            self.patience.count,
            describe_api_error(err),
            self.delay,
        )
        return None
