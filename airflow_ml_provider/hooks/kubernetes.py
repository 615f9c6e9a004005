"""
Hook for a training gang on Kubernetes: launch, watch, read the logs of and delete its Indexed Job.

What a gang's status means (:func:`job_verdict`), how long API errors are ridden out
(:class:`ErrorPatience`) and the whole poll policy (:class:`GangWatch`) live here once: the
synchronous :meth:`TrainingGangHook.wait` and the deferrable trigger both use them.

A thin layer over the cncf provider's ``KubernetesHook`` (the ``kubernetes`` extra), which owns the
connection. Every call goes to the ``kubernetes`` client's API objects directly, not through the
cncf helpers: ``KubernetesHook.create_job`` and ``get_job_status`` retry 409 and 5xx for up to
about 15 s (tenacity, ``generic_api_retry``), which turns "the Job already exists" into a slow
error and doubles the trigger's own backoff; ``get_pod_logs`` and ``get_namespaced_pod_list`` hand
back undecoded HTTP responses.

.. seealso:: :mod:`airflow_ml_provider.runners.kubernetes_objects` for the manifests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseHook

from airflow_ml_provider.exceptions import MLProviderError
from airflow_ml_provider.runners.kubernetes_objects import LABEL_GANG, SPEC_ANNOTATION

if TYPE_CHECKING:
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from kubernetes.client import V1Job, V1Pod

T = TypeVar("T")

INDEX_KEY = "batch.kubernetes.io/job-completion-index"
WORKER_CONTAINER = "worker"
# What the launcher needs in the gang's namespace; docs/training.md shows the Role built from it.
RBAC_RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("batch", "jobs", ("create", "get", "delete")),
    ("", "services", ("create", "get", "delete")),
    ("", "pods", ("list",)),
    ("", "pods/log", ("get",)),
)
RBAC_DOC = "docs/training.md#kubernetes-rbac"
# Pod names listed in a message before "and N more".
MAX_NAMED_PODS = 3
# Last lines of each failed pod put into the task's error.
LOG_TAIL_LINES = 40
MAX_BACKOFF_SECONDS = 60.0
# API errors are ridden out for at least this long (an API server restart, a control-plane upgrade).
MIN_ERROR_TIMEOUT_SECONDS = 300.0
# A gang in one of these phases is still doing this try's work: a retry may reattach to it.
LIVE_PHASES = ("pending", "running")


class KubernetesPermissionError(MLProviderError):
    """The Kubernetes API refused a call (403): the connection's identity lacks an RBAC rule."""

    def __init__(self, verb: str, resource: str, namespace: str, detail: str) -> None:
        self.verb = verb
        self.resource = resource
        self.namespace = namespace
        rules = "; ".join(
            f"{resource_ + ('.' + group if group else '')}: {', '.join(verbs)}"
            for group, resource_, verbs in RBAC_RULES
        )
        super().__init__(
            f"Kubernetes refused to {verb} {resource} in namespace {namespace!r} (403 Forbidden: "
            f"{detail}). The identity of the Kubernetes connection needs a Role in that namespace "
            f"allowing {rules}, bound to it with a RoleBinding; see the RBAC Role in {RBAC_DOC}."
        )


@dataclass(frozen=True)
class GangStatus:
    """
    Where a training gang stands.

    :param phase: ``pending`` (not every worker has started), ``running``, ``succeeded``,
        ``failed`` or ``missing`` (no such Job).
    :param message: a sentence for the task log, naming pods and reasons.
    :param pods_running: the gang's pods that have started: phase Running, or already Succeeded.
    :param workers: the gang size.
    :param failed_pods: the names of the pods in phase Failed, by completion index.
    """

    phase: str
    message: str
    pods_running: int
    workers: int
    failed_pods: tuple[str, ...] = ()


def _api_exception() -> type[Exception]:
    from kubernetes.client.exceptions import ApiException

    return ApiException


def _status_of(err: Exception) -> int | None:
    return getattr(err, "status", None) if isinstance(err, _api_exception()) else None


def _server_message(err: Exception) -> str:
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
    if isinstance(err, Exception) and _status_of(err) is not None:
        return f"{type(err).__name__}: {_status_of(err)} {_server_message(err)}"
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__


def _index(pod: V1Pod) -> int:
    meta = pod.metadata
    for source in (meta.annotations or {}, meta.labels or {}):
        if str(source.get(INDEX_KEY, "")).isdigit():
            return int(source[INDEX_KEY])
    # <job>-<index>-<random>, the Indexed Job's own pod naming
    parts = str(meta.name).rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else -1


def _condition(job: V1Job, kind: str) -> Any:
    conditions = (job.status.conditions if job.status else None) or []
    return next((c for c in conditions if c.type == kind and str(c.status) == "True"), None)


def _container_state(pod: V1Pod) -> Any:
    statuses = (pod.status.container_statuses if pod.status else None) or []
    chosen = next((s for s in statuses if s.name == WORKER_CONTAINER), statuses[0] if statuses else None)
    return chosen.state if chosen else None


def describe_failed_pod(pod: V1Pod) -> str:
    """``worker 1 (pod train-abc-1-x7k2p) exited with code 137 (OOMKilled)``."""
    where = f"worker {_index(pod)} (pod {pod.metadata.name})"
    state = _container_state(pod)
    terminated = state.terminated if state else None
    if terminated is not None:
        reason = f" ({terminated.reason})" if terminated.reason else ""
        # the termination message (e.g. a traceback): its last line says most
        last = [line for line in (terminated.message or "").splitlines() if line.strip()][-1:]
        detail = f": {last[0].strip()[:300].rstrip('.')}" if last else ""
        return f"{where} exited with code {terminated.exit_code}{reason}{detail}"
    # e.g. evicted or deadline exceeded: the pod, not the container, carries the reason
    status = pod.status
    return f"{where} failed: " + _reason_text(
        (status.reason if status else None) or "no reason given", status.message if status else None
    )


def pending_reason(pod: V1Pod) -> str:
    """Why a pod has not started: ``Unschedulable: 0/3 nodes are available ...``, ``ImagePullBackOff: ...``."""
    status = pod.status
    if status and status.phase and status.phase != "Pending":
        # "Unknown": the pod's node stopped reporting
        return _reason_text(status.phase, status.reason or status.message)
    for condition in (status.conditions if status else None) or []:
        if condition.type == "PodScheduled" and str(condition.status) == "False":
            return _reason_text(condition.reason or "NotScheduled", condition.message)
    statuses = [*((status.init_container_statuses if status else None) or [])]
    statuses += (status.container_statuses if status else None) or []
    for container in statuses:
        waiting = container.state.waiting if container.state else None
        if waiting is not None and waiting.reason:
            return _reason_text(waiting.reason, waiting.message)
    return "Pending: no reason reported yet"


def _reason_text(reason: str, message: str | None) -> str:
    text = (message or "").strip().rstrip(".")
    return f"{reason}: {text}" if text else reason


def _sentence(text: str) -> str:
    return text if text.endswith(".") else f"{text}."


def _workers(job: dict[str, Any]) -> int:
    """The gang size of a Job manifest: its ``completions`` (Kubernetes' default is 1)."""
    return int(job["spec"].get("completions") or 1)


def _template_annotations(job: V1Job) -> dict[str, str]:
    template = job.spec.template if job.spec is not None else None
    return dict((template.metadata.annotations if template and template.metadata else None) or {})


def _name_pods(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMED_PODS])
    more = len(names) - MAX_NAMED_PODS
    return f"{shown} and {more} more" if more > 0 else shown


class TrainingGangHook(BaseHook):
    """
    Launch, watch and delete a training gang: an Indexed Job and its headless Service.

    The Kubernetes connection is the cncf provider's (``kubernetes`` connection type: in-cluster,
    ``kube_config_path`` or ``kube_config`` extra); it is read once, on the first call.

    :param kubernetes_conn_id: the Kubernetes connection; None for in-cluster or default kubeconfig.
    :param kube_hook_kwargs: passed on to the cncf ``KubernetesHook`` (``cluster_context``,
        ``in_cluster``, ``config_file`` ...).
    """

    conn_name_attr = "kubernetes_conn_id"
    default_conn_name = "kubernetes_default"

    def __init__(self, kubernetes_conn_id: str | None = default_conn_name, **kube_hook_kwargs: Any) -> None:
        super().__init__()
        self.kubernetes_conn_id = kubernetes_conn_id
        self.kube_hook_kwargs = kube_hook_kwargs

    @cached_property
    def kube_hook(self) -> KubernetesHook:
        """The cncf hook, built on first use (the ``kubernetes`` extra is imported then)."""
        try:
            from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
            from kubernetes.client import Configuration
        except ImportError as err:
            raise ImportError(
                "The Kubernetes launcher needs the cncf Kubernetes provider: "
                "pip install 'airflow-ml-provider[kubernetes]'."
            ) from err
        kwargs = dict(self.kube_hook_kwargs)
        # Without a configuration of its own, loading a kubeconfig replaces the kubernetes
        # client's process-wide default, which every other hook in this process then uses.
        kwargs.setdefault("client_configuration", Configuration())
        return KubernetesHook(kubernetes_conn_id=self.kubernetes_conn_id, **kwargs)

    def _call(self, verb: str, resource: str, where: str, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """Call ``fn(**kwargs)``; a 403 becomes a :class:`KubernetesPermissionError` naming verb and resource."""
        try:
            return fn(**kwargs)
        except Exception as err:
            if _status_of(err) == 403:
                raise KubernetesPermissionError(verb, resource, where, _server_message(err)) from err
            raise

    # -- launch ---------------------------------------------------------------------------------

    def launch(self, job: dict[str, Any], service: dict[str, Any] | None = None) -> bool:
        """
        Create the gang's headless Service, then its Job; reattach to the gang's own Job if it exists.

        :param job: the Indexed Job manifest (:func:`~airflow_ml_provider.runners.kubernetes_objects.indexed_job`).
        :param service: the headless Service manifest, same name and namespace; None for a Job
            whose pods need no DNS names (a single-pod step).
        :return: True when the Job already existed and carries this gang's label (a retried or
            resumed task reattaches), False when this call created it.
        :raises ValueError: a Job or Service of that name exists and belongs to something else.
        :raises KubernetesPermissionError: the connection's identity may not create or read them.

        .. seealso:: :meth:`start_or_reattach`, which first replaces a stale Job of an earlier try.
        """
        name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
        if service is not None:
            self._launch_service(name, namespace, service)
        batch = self.kube_hook.batch_v1_client
        existing = self._create_or_adopt(
            "jobs.batch", batch.create_namespaced_job, batch.read_namespaced_job, job
        )
        if existing is None:
            self.log.info("Created Job %s/%s (%s workers).", namespace, name, job["spec"].get("completions"))
            return False
        wanted, found = job["spec"].get("completions"), existing.spec.completions if existing.spec else None
        if wanted != found:
            raise ValueError(
                f"Job {namespace}/{name} of this training gang exists already with {found} workers, but "
                f"this task asks for {wanted}: it cannot reattach to it. Delete the Job (kubectl -n "
                f"{namespace} delete job {name} --cascade=background) and retry the task."
            )
        self.log.info(
            "Job %s/%s of this training gang exists already (a retry or a resumed task): reattaching to it.",
            namespace,
            name,
        )
        return True

    def _launch_service(self, name: str, namespace: str, service: dict[str, Any]) -> None:
        if (service["metadata"]["name"], service["metadata"]["namespace"]) != (name, namespace):
            raise ValueError(
                f"Training gang {namespace}/{name}: the Service must have the Job's name and namespace, "
                f"got {service['metadata']['namespace']}/{service['metadata']['name']}."
            )
        core = self.kube_hook.core_v1_client
        if self._create_or_adopt(
            "services", core.create_namespaced_service, core.read_namespaced_service, service
        ):
            self.log.info("Service %s/%s of the training gang exists already; using it.", namespace, name)

    def start_or_reattach(
        self, job: dict[str, Any], service: dict[str, Any] | None, *, log: Any = None
    ) -> bool:
        """
        Start the gang, or reattach to the one an earlier try of the task left running.

        A retry reattaches only to a Job of this gang (by its label) that is still pending or
        running the same spec (:data:`~airflow_ml_provider.runners.kubernetes_objects.SPEC_ANNOTATION`
        of its pod template; the spec names the task's MLflow run, so it is the same across tries)
        with as many workers. A finished Job (failed, or succeeded before a clear) or one started
        with other arguments is deleted, and waited for, before the new one is created. A Job of
        that name that is not this gang's is left alone: :meth:`launch` refuses it.

        :param job: the Job manifest; its ``spec.completions`` is the gang size.
        :param service: the headless Service manifest, or None for a Job without one.
        :param log: where to say what happened (the operator's ``self.log``); the hook's by default.
        :return: True when it reattached, False when it created the Job.
        """
        log = log or self.log
        name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
        reason = self._stale_reason(job)
        if reason is not None:
            log.info("Replacing gang %s of an earlier try: %s", name, reason)
            self.delete(name, namespace, wait=True)
        reattached = self.launch(job, service)
        if reattached:
            log.info("Reattached to gang %s in %s: it is still running this spec", name, namespace)
        else:
            log.info("Started gang %s: Job of %d pod(s) in %s", name, _workers(job), namespace)
        return reattached

    def _stale_reason(self, job: dict[str, Any]) -> str | None:
        """Why the gang's existing Job must go before ``job`` starts; None when absent, live or not ours."""
        name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
        existing = self._read_or_none(
            "jobs.batch", self.kube_hook.batch_v1_client.read_namespaced_job, name, namespace
        )
        if existing is None or (existing.metadata.labels or {}).get(LABEL_GANG) != name:
            return None
        wanted = (job["spec"]["template"].get("metadata") or {}).get("annotations", {}).get(SPEC_ANNOTATION)
        if wanted is None or _template_annotations(existing).get(SPEC_ANNOTATION) != wanted:
            return "it ran another spec"
        workers, found = _workers(job), existing.spec.completions if existing.spec else None
        if found != workers:
            return f"it has {found} workers, this try asks for {workers}"
        pods = sorted(self._gang_pods(name, namespace, owner_uid=existing.metadata.uid), key=_index)
        phase = gang_status(name, namespace, workers, existing, pods).phase
        return None if phase in LIVE_PHASES else f"it is {phase}"

    def _create_or_adopt(
        self, resource: str, create: Callable[..., Any], read: Callable[..., Any], manifest: dict[str, Any]
    ) -> Any:
        """
        None when created; the existing object when one of this gang (by its label) is there already.

        Reads first, so a reattaching task sends no create; a create that still meets 409 (another
        try of the task won the race) reads the winner.
        """
        name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
        existing = self._read_or_none(resource, read, name, namespace)
        if existing is None:
            try:
                self._call("create", resource, namespace, create, namespace=namespace, body=manifest)
                return None
            except Exception as err:
                if _status_of(err) != 409:
                    raise
            existing = self._call("get", resource, namespace, read, name=name, namespace=namespace)
        labels = existing.metadata.labels or {}
        if labels.get(LABEL_GANG) != name:
            kind = "Job" if resource.startswith("jobs") else "Service"
            raise ValueError(
                f"A {kind} named {name!r} already exists in namespace {namespace!r} and is not this "
                f"training gang's (its label {LABEL_GANG} is {labels.get(LABEL_GANG)!r}, expected "
                f"{name!r}). Delete or rename that {kind} (kubectl -n {namespace} delete "
                f"{kind.lower()} {name}), or run the gang in another namespace."
            )
        return existing

    def _read_or_none(self, resource: str, read: Callable[..., Any], name: str, namespace: str) -> Any:
        try:
            return self._call("get", resource, namespace, read, name=name, namespace=namespace)
        except Exception as err:
            if _status_of(err) == 404:
                return None
            raise

    def pod_template_annotation(self, name: str, namespace: str, key: str) -> str | None:
        """
        An annotation of the pod template of Job ``name``; None when the Job or the annotation is missing.

        The launcher compares the spec annotation of an existing Job with the one it would create,
        to tell a retry of the same work from a changed or cleared task.
        """
        job = self._read_or_none(
            "jobs.batch", self.kube_hook.batch_v1_client.read_namespaced_job, name, namespace
        )
        value = _template_annotations(job).get(key) if job is not None else None
        return str(value) if value is not None else None

    # -- status ---------------------------------------------------------------------------------

    def status(self, name: str, namespace: str, workers: int) -> GangStatus:
        """
        Where the gang stands, from its Job and its pods.

        The pods are those with the gang label that this very Job owns: pods of an earlier Job of
        the same name (deleted, still terminating) do not count.

        :param name: the gang's name (Job and Service).
        :param namespace: its namespace.
        :param workers: the gang size.
        """
        job = self._read_or_none(
            "jobs.batch", self.kube_hook.batch_v1_client.read_namespaced_job, name, namespace
        )
        if job is None:
            return GangStatus("missing", f"Job {namespace}/{name} does not exist.", 0, workers)
        pods = sorted(self._gang_pods(name, namespace, owner_uid=job.metadata.uid), key=_index)
        return gang_status(name, namespace, workers, job, pods)

    def _gang_pods(self, name: str, namespace: str, owner_uid: str | None = None) -> list[V1Pod]:
        """The pods with the gang label; with ``owner_uid``, only those the Job of that uid owns."""
        listed = self._call(
            "list",
            "pods",
            namespace,
            self.kube_hook.core_v1_client.list_namespaced_pod,
            namespace=namespace,
            label_selector=f"{LABEL_GANG}={name}",
        )
        pods = list(listed.items or [])
        if owner_uid is None:
            return pods
        return [p for p in pods if any(o.uid == owner_uid for o in p.metadata.owner_references or [])]

    def wait(
        self,
        name: str,
        namespace: str,
        workers: int,
        *,
        started_at: float,
        start_timeout: float | None,
        poll_interval: float,
        error_timeout: float | None = None,
        log: Any = None,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> dict[str, Any]:
        """
        Poll the gang in this process until it succeeds, fails or does not start in time.

        The same policy, events and log lines as the deferrable
        :class:`~airflow_ml_provider.triggers.training_gang.TrainingGangTrigger` (:class:`GangWatch`).

        :param name: the gang's name (Job and Service).
        :param namespace: its namespace.
        :param workers: the gang size.
        :param started_at: when the gang was launched, Unix seconds.
        :param start_timeout: seconds after ``started_at`` by which every worker must run; None
            waits for ever.
        :param poll_interval: seconds between polls.
        :param error_timeout: seconds of uninterrupted API errors before an ``error`` event; None
            for ``max(300, 5 * poll_interval)``.
        :param log: where phase changes (INFO) and poll errors (WARNING) go; the hook's by default.
        :param sleep: how to wait between polls.
        :return: the event, ``{"status", "name", "namespace", "message"}``, status ``success``,
            ``failed``, ``start_timeout`` or ``error``.
        """
        watch = GangWatch(
            name,
            namespace,
            started_at=started_at,
            start_timeout=start_timeout,
            poll_interval=poll_interval,
            error_timeout=error_timeout,
            kubernetes_conn_id=self.kubernetes_conn_id,
            log=log or self.log,
        )
        while True:
            try:
                gang = self.status(name, namespace, workers)
            except Exception as err:
                event = watch.failed(err)
            else:
                event = watch.polled(gang)
            if event is not None:
                return event
            sleep(watch.delay)

    # -- logs -----------------------------------------------------------------------------------

    def log_tail(self, name: str, namespace: str, lines: int = 50) -> dict[str, list[str]]:
        """
        The last ``lines`` log lines of each pod of the gang, failed pods first, then by index.

        The pods of the gang's current Job when it exists, else every pod with the gang label. A pod
        whose log cannot be read (not started, gone, forbidden) gets one line saying why.
        """
        job = self._read_or_none(
            "jobs.batch", self.kube_hook.batch_v1_client.read_namespaced_job, name, namespace
        )
        pods = self._gang_pods(name, namespace, owner_uid=job.metadata.uid if job is not None else None)
        pods.sort(key=lambda p: (0 if p.status and p.status.phase == "Failed" else 1, _index(p)))
        return {pod.metadata.name: self._pod_log(pod, namespace, lines) for pod in pods}

    def _pod_log(self, pod: V1Pod, namespace: str, lines: int) -> list[str]:
        containers = [c.name for c in (pod.spec.containers if pod.spec else None) or []]
        container = WORKER_CONTAINER if WORKER_CONTAINER in containers else None
        try:
            # Undecoded: the client would otherwise turn a JSON-looking log into a Python repr.
            response = self.kube_hook.core_v1_client.read_namespaced_pod_log(
                name=pod.metadata.name,
                namespace=namespace,
                container=container,
                tail_lines=lines,
                _preload_content=False,
            )
            text = response.data.decode("utf-8", errors="replace")
        except Exception as err:
            code = _status_of(err)
            if code is None:
                raise
            return [f"(log of pod {pod.metadata.name} not available: {code} {_server_message(err)})"]
        return text.splitlines()[-lines:] if lines > 0 else []

    # -- delete ---------------------------------------------------------------------------------

    def delete(
        self,
        name: str,
        namespace: str,
        wait: bool = False,
        timeout: float = 120.0,
        poll_interval: float = 1.0,
    ) -> None:
        """
        Delete the gang's Job (its pods with it, propagation Background) and its Service; gone is fine.

        :param wait: return only once the Job and all the gang's pods are gone, so that a new gang of
            the same name neither meets 409 nor shares the Service's DNS names with dying pods.
        :param timeout: seconds to wait at most; then TimeoutError.
        :param poll_interval: seconds between checks while waiting.
        """
        batch = self.kube_hook.batch_v1_client
        job_gone = not self._delete_if_there(
            "jobs.batch", batch.delete_namespaced_job, name, namespace, propagation_policy="Background"
        )
        service_gone = not self.delete_service(name, namespace)
        self.log.info(
            "Deleted the training gang %s/%s (Job: %s, Service: %s).",
            namespace,
            name,
            "already gone" if job_gone else "deleted",
            "already gone" if service_gone else "deleted",
        )
        if wait:
            self._wait_gone(name, namespace, timeout, poll_interval)

    def conclude(
        self,
        event: dict[str, Any],
        *,
        what: str,
        gang: bool,
        start_timeout: float,
        report: str | None,
        log: Any = None,
    ) -> None:
        """
        Act on the final event of a step's Job (from :meth:`wait` or the trigger).

        Success: log the pods' last lines and remove a gang's Service (the Job and its pods stay
        until their TTL, for their logs). An unreachable API (``error``): leave the Job, a retry
        reattaches to it. Otherwise delete the Job and raise :class:`TrainingJobFailed` with the
        failing pods' last lines.

        :param event: ``{"status", "name", "namespace", "message"}``.
        :param what: what the Job is called in the error, e.g. ``"Training gang x in namespace ml"``.
        :param gang: the Job has a headless Service.
        :param start_timeout: the start timeout the wait used, for the message.
        :param report: the task's MLflow run, for the message.
        """
        from airflow_ml_provider.exceptions import TrainingJobFailed

        log = log or self.log
        name, namespace = str(event.get("name")), str(event.get("namespace"))
        status, message = event.get("status"), str(event.get("message", ""))
        if status == "success":
            for pod, lines in self.log_tail(name, namespace, lines=10).items():
                log.info("Last lines of %s:\n%s", pod, "\n".join(lines))
            if gang:
                self.delete_service(name, namespace)
            return
        if status == "error":
            raise TrainingJobFailed(what, f"could not follow the Job: {message}", report=report)
        tails = self.log_tail(name, namespace, lines=LOG_TAIL_LINES)
        self.delete(name, namespace)
        if status == "start_timeout":
            message = f"did not fully start within {start_timeout:.0f} s, so it was deleted: {message}"
        raise TrainingJobFailed(what, message, log_tails=tails, report=report)

    def delete_service(self, name: str, namespace: str) -> bool:
        """Delete the gang's headless Service only (the Job stays for its logs); False when it was gone."""
        return self._delete_if_there(
            "services", self.kube_hook.core_v1_client.delete_namespaced_service, name, namespace
        )

    def _delete_if_there(
        self, resource: str, delete: Callable[..., Any], name: str, namespace: str, **extra: Any
    ) -> bool:
        try:
            self._call("delete", resource, namespace, delete, name=name, namespace=namespace, **extra)
            return True
        except Exception as err:
            if _status_of(err) != 404:
                raise
            return False

    def _wait_gone(self, name: str, namespace: str, timeout: float, poll_interval: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            job = self._read_or_none(
                "jobs.batch", self.kube_hook.batch_v1_client.read_namespaced_job, name, namespace
            )
            pods = self._gang_pods(name, namespace)
            if job is None and not pods:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"Training gang {namespace}/{name} was deleted but after {timeout:g} s "
                    f"{'its Job and ' if job is not None else ''}{len(pods)} pod(s) are still there "
                    f"(finalizers? kubectl -n {namespace} get job,pods -l {LABEL_GANG}={name})."
                )
            time.sleep(min(poll_interval, left))


def gang_status(name: str, namespace: str, workers: int, job: V1Job, pods: list[V1Pod]) -> GangStatus:
    """The :class:`GangStatus` of the Job ``job`` with the gang's ``pods`` (sorted by index)."""
    started = sum(1 for p in pods if p.status and p.status.phase in ("Running", "Succeeded"))
    failed = [p for p in pods if p.status and p.status.phase == "Failed"]
    failed_names = tuple(p.metadata.name for p in failed)
    succeeded = (job.status.succeeded if job.status else None) or 0
    where = f"Job {namespace}/{name}"
    if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet") or succeeded >= workers:
        return GangStatus(
            "succeeded",
            f"{where} completed: {succeeded or workers} of {workers} workers succeeded.",
            started,
            workers,
        )
    job_failed = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if failed or job_failed or ((job.status.failed if job.status else None) or 0) > 0:
        parts = [describe_failed_pod(p) for p in failed]
        if job_failed:
            parts.append(f"the Job failed: {_reason_text(job_failed.reason or 'Failed', job_failed.message)}")
        elif not parts:
            parts.append(f"{job.status.failed} pod(s) failed and are gone")
        return GangStatus(
            "failed", _sentence(f"{where} failed: " + "; ".join(parts)), started, workers, failed_names
        )
    if started >= workers:
        return GangStatus("running", f"{where}: all {workers} pods running.", started, workers)
    return GangStatus("pending", _pending_message(where, workers, started, job, pods), started, workers)


def _pending_message(where: str, workers: int, started: int, job: V1Job, pods: list[V1Pod]) -> str:
    waiting = [p for p in pods if not (p.status and p.status.phase in ("Running", "Succeeded"))]
    by_reason: dict[str, list[str]] = {}
    for pod in waiting:
        by_reason.setdefault(pending_reason(pod), []).append(pod.metadata.name)
    parts = [f"{_name_pods(names)}: {reason}" for reason, names in by_reason.items()]
    missing = workers - len(pods)
    if missing > 0:
        parts.append(
            f"{missing} pod(s) not created yet (see the Job's events: kubectl -n "
            f"{job.metadata.namespace} describe job {job.metadata.name})"
        )
    suspended = _condition(job, "Suspended")
    if suspended:
        parts.insert(
            0, f"the Job is suspended ({_reason_text(suspended.reason or 'Suspended', suspended.message)})"
        )
    return _sentence(
        f"{where}: {started} of {workers} pods running; {workers - started} not started: " + "; ".join(parts)
    )


# -- waiting: one policy for the synchronous wait and the trigger ----------------------------------


def job_verdict(
    status: GangStatus,
    *,
    name: str,
    namespace: str,
    started_at: float,
    now: float,
    start_timeout: float | None,
) -> tuple[str, str] | None:
    """
    What a gang's status means to whoever waits for it: ``(event status, message)``, or None to poll on.

    The event status is ``success``, ``failed`` (a worker or the Job failed, or the Job is gone)
    or ``start_timeout`` (still pending ``start_timeout`` seconds after ``started_at``; a gang only
    trains when all its workers run, so a partial gang is no progress).

    :param status: the gang's :class:`GangStatus`.
    :param name: the gang's name.
    :param namespace: its namespace.
    :param started_at: when it was launched, Unix seconds.
    :param now: the time of ``status``, Unix seconds.
    :param start_timeout: seconds by which every worker must run; None waits for ever.
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
    if status.phase == "pending" and start_timeout is not None and now >= started_at + float(start_timeout):
        return (
            "start_timeout",
            f"The training gang did not fully start within {start_timeout:g} s of its launch: {status.message}",
        )
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
        kubernetes_conn_id: str | None = None,
        log: Any,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.started_at = float(started_at)
        self.start_timeout = start_timeout
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
