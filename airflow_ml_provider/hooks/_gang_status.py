"""
What a training gang's Job and pods say, as one :class:`GangStatus`: the reading half of
:mod:`airflow_ml_provider.hooks.kubernetes`, with no API call of its own.

A gang's Job retries per completion index (``backoffLimitPerIndex``) under its own
``podFailurePolicy``, and Kueue may hold it suspended: so an index can have several pods (the
failed ones stay until the Job goes), only the newest of each counts, and besides ``pending``,
``running``, ``succeeded`` and ``failed`` a gang can be ``queued`` (suspended, waiting for Kueue to
admit it) or ``restarting`` (a worker failed or is being evicted, and Kubernetes replaces it).
Whether the Job has failed is Kubernetes' call (its ``Failed`` / ``FailureTarget`` conditions);
the Job's failure policy is read only to say what a worker's failure leads to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.runners.kubernetes_objects import LABEL_KUEUE_QUEUE

if TYPE_CHECKING:
    from datetime import datetime

    from kubernetes.client import V1Job, V1Pod

INDEX_KEY = "batch.kubernetes.io/job-completion-index"
# Set by the Job controller on the pods of a Job with backoffLimitPerIndex: the index's failures
# before this pod, counted and not counted (pod failure policy "Ignore") ones.
FAILURE_COUNT_KEY = "batch.kubernetes.io/job-index-failure-count"
IGNORED_FAILURE_COUNT_KEY = "batch.kubernetes.io/job-index-ignored-failure-count"
WORKER_CONTAINER = "worker"
# Pod names listed in a message before "and N more".
MAX_NAMED_PODS = 3
RESTART_NOTE = "the whole gang restarts, from its last checkpoint if it keeps one"
_STARTED = ("Running", "Succeeded")
_TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class GangStatus:
    """
    Where a training gang stands.

    :param phase: ``pending`` (not every worker has started), ``running``, ``queued`` (the Job is
        suspended: waiting for Kueue's admission, or preempted), ``restarting`` (a worker failed or
        is being evicted and the Job replaces it), ``succeeded``, ``failed`` or ``missing`` (no
        such Job).
    :param message: a sentence for the task log, naming pods and reasons.
    :param pods_running: the gang's current pods (the newest of each index) that have started:
        phase Running, or already Succeeded.
    :param workers: the gang size.
    :param failed_pods: for a ``failed`` gang, the names of the failed pods that made it fail
        (else every current pod in phase Failed), by completion index.
    :param start_time: the Job's ``status.startTime`` (Unix seconds): when Kubernetes started it,
        or resumed it after a suspension; None before.
    :param queued_since: for a ``queued`` gang, when its wait began (Unix seconds): the time the
        Job's Suspended condition turned True, else the Job's creation.
    """

    phase: str
    message: str
    pods_running: int
    workers: int
    failed_pods: tuple[str, ...] = ()
    start_time: float | None = None
    queued_since: float | None = None


# -- pods ------------------------------------------------------------------------------------------


def pod_index(pod: V1Pod) -> int:
    """The pod's completion index; -1 when it has none."""
    meta = pod.metadata
    for source in (meta.annotations or {}, meta.labels or {}):
        if str(source.get(INDEX_KEY, "")).isdigit():
            return int(source[INDEX_KEY])
    # <job>-<index>-<random>, the Indexed Job's own pod naming
    parts = str(meta.name).rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else -1


def _count(pod: V1Pod, key: str) -> int:
    value = str((pod.metadata.annotations or {}).get(key, "0"))
    return int(value) if value.isdigit() else 0


def _seconds(when: datetime | None) -> float | None:
    return when.timestamp() if when is not None else None


def _phase(pod: V1Pod | None) -> str | None:
    return pod.status.phase if pod is not None and pod.status else None


def _terminating(pod: V1Pod) -> bool:
    return pod.metadata.deletion_timestamp is not None and _phase(pod) not in _TERMINAL


def _started(pod: V1Pod) -> bool:
    return _phase(pod) in _STARTED and not _terminating(pod)


def newest_per_index(pods: list[V1Pod]) -> list[V1Pod]:
    """
    The current pod of each completion index, by index: the one with the most earlier failures
    (the Job controller's failure-count annotations), then the newest, then a live one.
    """

    def age(pod: V1Pod) -> tuple[int, float, int]:
        attempts = _count(pod, FAILURE_COUNT_KEY) + _count(pod, IGNORED_FAILURE_COUNT_KEY)
        created = _seconds(pod.metadata.creation_timestamp) or 0.0
        live = 0 if _phase(pod) in _TERMINAL or pod.metadata.deletion_timestamp else 1
        return attempts, created, live

    newest: dict[int, V1Pod] = {}
    for pod in pods:
        index = pod_index(pod)
        if index not in newest or age(pod) > age(newest[index]):
            newest[index] = pod
    return [newest[i] for i in sorted(newest)]


def condition(obj: Any, kind: str) -> Any:
    """The condition ``kind`` of a Job or pod when its status is True, else None."""
    conditions = (obj.status.conditions if obj.status else None) or []
    return next((c for c in conditions if c.type == kind and str(c.status) == "True"), None)


def _container_state(pod: V1Pod) -> Any:
    statuses = (pod.status.container_statuses if pod.status else None) or []
    chosen = next((s for s in statuses if s.name == WORKER_CONTAINER), statuses[0] if statuses else None)
    return chosen.state if chosen else None


def _where(pod: V1Pod) -> str:
    return f"worker {pod_index(pod)} (pod {pod.metadata.name})"


def describe_failed_pod(pod: V1Pod) -> str:
    """``worker 1 (pod train-abc-1-x7k2p) exited with code 137 (OOMKilled)``, or ``... was evicted (...)``."""
    disrupted = condition(pod, "DisruptionTarget")
    if disrupted is not None:
        return f"{_where(pod)} was evicted ({_disruption(disrupted)})"
    state = _container_state(pod)
    terminated = state.terminated if state else None
    if terminated is not None:
        reason = f" ({terminated.reason})" if terminated.reason else ""
        # the termination message (e.g. a traceback): its last line says most
        last = [line for line in (terminated.message or "").splitlines() if line.strip()][-1:]
        detail = f": {last[0].strip()[:300].rstrip('.')}" if last else ""
        return f"{_where(pod)} exited with code {terminated.exit_code}{reason}{detail}"
    # e.g. deadline exceeded: the pod, not the container, carries the reason
    status = pod.status
    return f"{_where(pod)} failed: " + reason_text(
        (status.reason if status else None) or "no reason given", status.message if status else None
    )


def _disruption(disrupted: Any) -> str:
    return "DisruptionTarget: " + reason_text(disrupted.reason or "Disrupted", disrupted.message)


def pending_reason(pod: V1Pod) -> str:
    """Why a pod has not started: ``Unschedulable: 0/3 nodes are available ...``, ``ImagePullBackOff: ...``."""
    status = pod.status
    if status and status.phase and status.phase != "Pending":
        # "Unknown": the pod's node stopped reporting
        return reason_text(status.phase, status.reason or status.message)
    for cond in (status.conditions if status else None) or []:
        if cond.type == "PodScheduled" and str(cond.status) == "False":
            return reason_text(cond.reason or "NotScheduled", cond.message)
    statuses = [*((status.init_container_statuses if status else None) or [])]
    statuses += (status.container_statuses if status else None) or []
    for container in statuses:
        waiting = container.state.waiting if container.state else None
        if waiting is not None and waiting.reason:
            return reason_text(waiting.reason, waiting.message)
    return "Pending: no reason reported yet"


def reason_text(reason: str, message: str | None) -> str:
    """``Reason: message`` (the message's final period dropped), or the reason alone."""
    text = (message or "").strip().rstrip(".")
    return f"{reason}: {text}" if text else reason


def sentence(text: str) -> str:
    """``text`` ending with a period."""
    return text if text.endswith(".") else f"{text}."


def name_pods(names: list[str]) -> str:
    """``a, b, c and 2 more``."""
    shown = ", ".join(names[:MAX_NAMED_PODS])
    more = len(names) - MAX_NAMED_PODS
    return f"{shown} and {more} more" if more > 0 else shown


# -- the Job's own retry policy, read to explain a failure -----------------------------------------


def failure_action(job: V1Job, pod: V1Pod) -> str | None:
    """
    The action (``Ignore``, ``FailJob``, ``FailIndex``, ``Count``) of the first rule of the Job's
    ``podFailurePolicy`` that matches the failed ``pod``, as the Job controller picks it; None
    when no rule matches (the failure counts against the Job's limits).
    """
    policy = job.spec.pod_failure_policy if job.spec else None
    for rule in (policy.rules if policy else None) or []:
        if _matches_conditions(rule.on_pod_conditions, pod) or _matches_exit_codes(rule.on_exit_codes, pod):
            return str(rule.action)
    return None


def _matches_conditions(patterns: Any, pod: V1Pod) -> bool:
    conditions = (pod.status.conditions if pod.status else None) or []
    return any(
        c.type == p.type and str(c.status) == str(p.status or "True")
        for p in patterns or []
        for c in conditions
    )


def _matches_exit_codes(requirement: Any, pod: V1Pod) -> bool:
    if requirement is None:
        return False
    statuses = [*((pod.status.init_container_statuses if pod.status else None) or [])]
    statuses += (pod.status.container_statuses if pod.status else None) or []
    codes = [
        s.state.terminated.exit_code
        for s in statuses
        if s.state
        and s.state.terminated
        and s.state.terminated.exit_code  # Kubernetes never matches exit code 0
        and (not requirement.container_name or s.name == requirement.container_name)
    ]
    values = set(requirement.values or [])
    if requirement.operator == "NotIn":
        return any(code not in values for code in codes)
    return any(code in values for code in codes)


def retries(job: V1Job) -> bool:
    """The Job replaces a failed pod (per index, or under a backoffLimit above 0) instead of failing."""
    spec = job.spec
    return spec is not None and (spec.backoff_limit_per_index is not None or (spec.backoff_limit or 0) > 0)


def _what_follows(job: V1Job, pod: V1Pod) -> str:
    """What the Job controller does about the failed ``pod``, by the Job's own policy."""
    action = failure_action(job, pod)
    index = pod_index(pod)
    if action == "Ignore":
        return "Kubernetes replaces it without counting it"
    if action == "FailJob":
        return "an application error: the Job's pod failure policy fails it without a retry"
    if action == "FailIndex":
        return f"the Job's pod failure policy fails index {index} without a retry"
    limit = job.spec.backoff_limit_per_index if job.spec else None
    if limit is None:
        return f"Kubernetes replaces it (backoffLimit {job.spec.backoff_limit if job.spec else 0})"
    failures = _count(pod, FAILURE_COUNT_KEY) + 1
    if failures <= limit:
        return f"retry {failures} of {limit} of index {index}"
    return _index_exhausted(index, failures, limit)


def _index_exhausted(index: int, failures: int, limit: int) -> str:
    times = "time" if failures == 1 else "times"
    tries = "retry" if limit == 1 else "retries"
    return (
        f"index {index} failed {failures} {times}, beyond its limit of {limit} {tries} "
        "(backoffLimitPerIndex), which fails the Job"
    )


def _restart_note(job: V1Job, pod: V1Pod) -> str:
    """``retry 1 of 3``, ``after 1 disruption, not counted`` for a replacement pod."""
    failures, ignored = _count(pod, FAILURE_COUNT_KEY), _count(pod, IGNORED_FAILURE_COUNT_KEY)
    limit = job.spec.backoff_limit_per_index if job.spec else None
    notes = []
    if failures:
        notes.append(f"retry {failures} of {limit}" if limit is not None else f"after {failures} failure(s)")
    if ignored:
        notes.append(f"after {ignored} disruption{'s' if ignored != 1 else ''}, not counted")
    return "; ".join(notes) or "a replacement"


# -- the status ------------------------------------------------------------------------------------


def gang_status(
    name: str,
    namespace: str,
    workers: int,
    job: V1Job,
    pods: list[V1Pod],
    *,
    queue_reason: str | None = None,
) -> GangStatus:
    """
    The :class:`GangStatus` of the Job ``job`` with the gang's ``pods`` (every pod it owns).

    :param queue_reason: why Kueue has not admitted the Job (its Workload's conditions), for a
        suspended Job in a LocalQueue; None when unknown.
    """
    current = newest_per_index(pods)
    started = sum(1 for p in current if _started(p))
    start_time = _seconds(job.status.start_time if job.status else None)
    where = f"Job {namespace}/{name}"

    def status(phase: str, message: str, **extra: Any) -> GangStatus:
        return GangStatus(phase, message, started, workers, start_time=start_time, **extra)

    succeeded = (job.status.succeeded if job.status else None) or 0
    if condition(job, "Complete") or condition(job, "SuccessCriteriaMet") or succeeded >= workers:
        return status(
            "succeeded", f"{where} completed: {succeeded or workers} of {workers} workers succeeded."
        )
    failure = _failure(job, [p for p in current if _phase(p) == "Failed"])
    if failure is not None:
        text, culprits = failure
        failed_pods = tuple(p.metadata.name for p in culprits)
        return status("failed", sentence(f"{where} failed: " + text), failed_pods=failed_pods)
    if (job.spec is not None and job.spec.suspend) or condition(job, "Suspended"):
        return status("queued", _queued_message(job, queue_reason), queued_since=_queued_since(job))
    restarts = _restarts(job, current, pods)
    if restarts:
        message = f"{where}: {started} of {workers} workers running; " + "; ".join(restarts)
        return status("restarting", sentence(f"{message}; {RESTART_NOTE}"))
    if started >= workers:
        return status("running", f"{where}: all {workers} pods running.")
    return status("pending", _pending_message(where, workers, started, job, current))


def _failure(job: V1Job, failed: list[V1Pod]) -> tuple[str, list[V1Pod]] | None:
    """Why the gang failed and the failed pods that made it fail, or None: the Job's Failed (or
    FailureTarget) condition, or for a Job that does not retry, a failed pod."""
    job_failed = condition(job, "Failed") or condition(job, "FailureTarget")
    count = (job.status.failed if job.status else None) or 0
    if not job_failed and (retries(job) or not (failed or count)):
        return None
    culprits = _culprits(job, failed) if job_failed and retries(job) else []
    if culprits:
        parts = [f"{describe_failed_pod(p)}: {_what_follows(job, p)}" for p in culprits]
    else:
        culprits = failed
        parts = [describe_failed_pod(p) for p in failed]
    if job_failed:
        parts.append(f"the Job failed: {reason_text(job_failed.reason or 'Failed', job_failed.message)}")
    elif not parts:
        parts.append(f"{count} pod(s) failed and are gone")
    return "; ".join(parts), culprits


def _culprits(job: V1Job, failed: list[V1Pod]) -> list[V1Pod]:
    """The failed pods that failed a retrying Job: a FailJob or FailIndex rule's, or those of its
    failed indexes (out of retries); not the workers that failed after them."""
    indexes = failed_indexes(job)
    return [
        p for p in failed if failure_action(job, p) in ("FailJob", "FailIndex") or pod_index(p) in indexes
    ]


def failed_indexes(job: V1Job) -> set[int]:
    """The Job's ``status.failedIndexes`` (``"1,3-5"``) as a set."""
    text = (job.status.failed_indexes if job.status else None) or ""
    indexes: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        if low.isdigit() and (high.isdigit() or not high):
            indexes.update(range(int(low), int(high or low) + 1))
    return indexes


def _restarts(job: V1Job, current: list[V1Pod], pods: list[V1Pod]) -> list[str]:
    """One phrase per worker being replaced; none when the Job does not retry or none is."""
    if not retries(job):
        return []
    names = {p.metadata.name for p in current}
    # the pod each current one replaced, when it is still there (a failed pod stays, a deleted one goes)
    previous = {pod_index(p): p for p in newest_per_index([p for p in pods if p.metadata.name not in names])}
    parts = []
    for pod in current:
        disrupted = condition(pod, "DisruptionTarget")
        if _phase(pod) == "Failed":
            parts.append(f"{describe_failed_pod(pod)}: {_what_follows(job, pod)}")
        elif _terminating(pod) and disrupted is not None:
            parts.append(f"{_where(pod)} was evicted ({_disruption(disrupted)}): {_what_follows(job, pod)}")
        elif _terminating(pod):
            parts.append(f"{_where(pod)} is terminating")
        elif not _started(pod) and _phase(previous.get(pod_index(pod))) == "Failed":
            before = previous[pod_index(pod)]
            parts.append(
                f"{describe_failed_pod(before)}: {_what_follows(job, before)}; it restarts as pod "
                f"{pod.metadata.name}: {pending_reason(pod)}"
            )
        elif not _started(pod) and _count(pod, FAILURE_COUNT_KEY) + _count(pod, IGNORED_FAILURE_COUNT_KEY):
            parts.append(f"{_where(pod)} restarts ({_restart_note(job, pod)}): {pending_reason(pod)}")
    return parts


def _queued_since(job: V1Job) -> float | None:
    suspended = condition(job, "Suspended")
    when = suspended.last_transition_time if suspended is not None else None
    return _seconds(when or job.metadata.creation_timestamp)


def queue_name(job: V1Job) -> str | None:
    """The Kueue LocalQueue the Job is in (its label), or None."""
    return (job.metadata.labels or {}).get(LABEL_KUEUE_QUEUE)


def _queued_message(job: V1Job, queue_reason: str | None) -> str:
    queue = queue_name(job)
    if queue is None:
        suspended = condition(job, "Suspended")
        why = reason_text(suspended.reason or "Suspended", suspended.message) if suspended else "spec.suspend"
        return f"the Job is suspended ({why}); it starts once resumed (spec.suspend: false)."
    reason = f": {queue_reason}" if queue_reason else ""
    return sentence(f"waiting for Kueue admission in LocalQueue {queue}{reason}")


def _pending_message(where: str, workers: int, started: int, job: V1Job, current: list[V1Pod]) -> str:
    waiting = [p for p in current if not _started(p)]
    by_reason: dict[str, list[str]] = {}
    for pod in waiting:
        by_reason.setdefault(pending_reason(pod), []).append(pod.metadata.name)
    parts = [f"{name_pods(names)}: {reason}" for reason, names in by_reason.items()]
    missing = workers - len(current)
    if missing > 0:
        parts.append(
            f"{missing} pod(s) not created yet (see the Job's events: kubectl -n "
            f"{job.metadata.namespace} describe job {job.metadata.name})"
        )
    return sentence(
        f"{where}: {started} of {workers} pods running; {workers - started} not started: " + "; ".join(parts)
    )


# -- Kueue -------------------------------------------------------------------------------------------


def workload_reason(workload: dict[str, Any]) -> str:
    """
    Why Kueue has not admitted a Workload (a ``kueue.x-k8s.io`` Workload as a dict), from its
    conditions: ``QuotaReserved`` False (``couldn't assign flavors to pod set main: insufficient
    unused quota for nvidia.com/gpu in flavor gpu-a100, 2 more needed``), and ``Evicted`` True
    after a preemption.
    """
    conditions = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}

    def holds(kind: str, status: str = "True") -> dict[str, Any] | None:
        found = conditions.get(kind)
        return found if found is not None and str(found.get("status")) == status else None

    parts = []
    quota = holds("QuotaReserved", "False")
    if quota is not None:
        parts.append(str(quota.get("message") or quota.get("reason") or "no quota reserved yet").rstrip("."))
    elif holds("Admitted"):
        parts.append("admitted, the Job is about to be resumed")
    else:
        parts.append("Kueue has not tried to reserve quota for it yet")
    evicted = holds("Evicted")
    if evicted is not None:
        parts.append(
            f"it was evicted before: {reason_text(evicted.get('reason') or 'Evicted', evicted.get('message'))}"
        )
    return "; ".join(parts)
