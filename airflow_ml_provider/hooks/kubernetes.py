"""
Hook for a training gang on Kubernetes: launch, watch, read the logs of and delete its Indexed Job.

What a gang's status means (:func:`job_verdict`), how long API errors are ridden out
(:class:`ErrorPatience`) and the whole poll policy (:class:`GangWatch`) live here once: the
synchronous :meth:`TrainingGangHook.wait` and the deferrable trigger both use them. What the Job
and its pods say (:class:`GangStatus`: pending, running, queued by Kueue, restarting a worker,
succeeded, failed) is read in :mod:`airflow_ml_provider.hooks._gang_status`.

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
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseHook

from airflow_ml_provider.hooks._gang_status import (
    INDEX_KEY,
    MAX_NAMED_PODS,
    WORKER_CONTAINER,
    GangStatus,
    condition,
    describe_failed_pod,
    gang_status,
    newest_per_index,
    pending_reason,
    pod_index,
    queue_name,
    workload_reason,
)
from airflow_ml_provider.hooks._gang_watch import (
    MAX_BACKOFF_SECONDS,
    MIN_ERROR_TIMEOUT_SECONDS,
    OPTIONAL_RBAC_RULES,
    RBAC_DOC,
    RBAC_RULES,
    ErrorPatience,
    GangWatch,
    KubernetesPermissionError,
    admission_timeout_text,
    describe_api_error,
    job_verdict,
    rules_text,
    server_message,
    start_timeout_text,
    status_of,
)
from airflow_ml_provider.runners.kubernetes_objects import LABEL_GANG, SPEC_ANNOTATION

if TYPE_CHECKING:
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from kubernetes.client import V1Job, V1Pod

__all__ = [
    "INDEX_KEY",
    "LIVE_PHASES",
    "MAX_BACKOFF_SECONDS",
    "MAX_NAMED_PODS",
    "MIN_ERROR_TIMEOUT_SECONDS",
    "OPTIONAL_RBAC_RULES",
    "RBAC_DOC",
    "RBAC_RULES",
    "WORKER_CONTAINER",
    "ErrorPatience",
    "GangStatus",
    "GangWatch",
    "KubernetesPermissionError",
    "TrainingGangHook",
    "describe_api_error",
    "describe_failed_pod",
    "gang_status",
    "job_verdict",
    "pending_reason",
]

T = TypeVar("T")

KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta1"
# Kueue's label on the Workload it makes for a Job: the Job's uid.
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
# Last lines of each failed pod put into the task's error.
LOG_TAIL_LINES = 40
# A gang in one of these phases is still doing this try's work: a retry may reattach to it.
LIVE_PHASES = ("pending", "running", "queued", "restarting")


def _workers(job: dict[str, Any]) -> int:
    """The gang size of a Job manifest: its ``completions`` (Kubernetes' default is 1)."""
    return int(job["spec"].get("completions") or 1)


def _template_annotations(job: V1Job) -> dict[str, str]:
    template = job.spec.template if job.spec is not None else None
    return dict((template.metadata.annotations if template and template.metadata else None) or {})


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
        # Kueue's Workloads answered 403 or 404 once: not asked again (see queue_reason).
        self._workloads_unreadable = False

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
            if status_of(err) == 403:
                raise KubernetesPermissionError(verb, resource, where, server_message(err)) from err
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
        existing = self._read_job(name, namespace)
        if existing is None or (existing.metadata.labels or {}).get(LABEL_GANG) != name:
            return None
        wanted = (job["spec"]["template"].get("metadata") or {}).get("annotations", {}).get(SPEC_ANNOTATION)
        if wanted is None or _template_annotations(existing).get(SPEC_ANNOTATION) != wanted:
            return "it ran another spec"
        workers, found = _workers(job), existing.spec.completions if existing.spec else None
        if found != workers:
            return f"it has {found} workers, this try asks for {workers}"
        phase = gang_status(name, namespace, workers, existing, self._job_pods(existing)).phase
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
                if status_of(err) != 409:
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
            if status_of(err) == 404:
                return None
            raise

    def pod_template_annotation(self, name: str, namespace: str, key: str) -> str | None:
        """
        An annotation of the pod template of Job ``name``; None when the Job or the annotation is missing.

        The launcher compares the spec annotation of an existing Job with the one it would create,
        to tell a retry of the same work from a changed or cleared task.
        """
        job = self._read_job(name, namespace)
        value = _template_annotations(job).get(key) if job is not None else None
        return str(value) if value is not None else None

    def job_ref(self, name: str, namespace: str) -> dict[str, str] | None:
        """
        ``{"name", "namespace", "uid"}`` of the gang's Job as it exists now; None when there is none.

        What a task keeps in its durable state: :meth:`earlier_outcome` later tells that very Job
        (by its uid) from a newer one of the same name.
        """
        job = self._read_job(name, namespace)
        if job is None:
            return None
        return {"name": name, "namespace": namespace, "uid": str(job.metadata.uid)}

    def earlier_outcome(self, ref: dict[str, Any]) -> str:
        """
        How the Job of ``ref`` (from :meth:`job_ref`) ended, or that it goes on.

        :return: ``"active"`` (pending, running, queued or restarting), ``"succeeded"``,
            ``"failed"``, or ``"gone"`` when no Job of that name has that uid any more (deleted,
            or replaced by a newer one).
        """
        name, namespace = str(ref["name"]), str(ref["namespace"])
        job = self._read_job(name, namespace)
        if job is None or str(job.metadata.uid) != str(ref.get("uid")):
            return "gone"
        workers = int((job.spec.completions if job.spec else None) or 1)
        phase = gang_status(name, namespace, workers, job, self._job_pods(job)).phase
        return phase if phase in ("succeeded", "failed") else "active"

    # -- status ---------------------------------------------------------------------------------

    def status(self, name: str, namespace: str, workers: int, *, log: Any = None) -> GangStatus:
        """
        Where the gang stands, from its Job and its pods (the newest pod of each index counts).

        The pods are those with the gang label that this very Job owns: pods of an earlier Job of
        the same name (deleted, still terminating) do not count. For a Job waiting in a Kueue
        LocalQueue, Kueue's reason is read from its Workload, best effort (:data:`OPTIONAL_RBAC_RULES`).

        :param name: the gang's name (Job and Service).
        :param namespace: its namespace.
        :param workers: the gang size.
        :param log: where to say, once, that Kueue's Workloads cannot be read; the hook's by default.
        """
        job = self._read_job(name, namespace)
        if job is None:
            return GangStatus("missing", f"Job {namespace}/{name} does not exist.", 0, workers)
        suspended = (job.spec is not None and job.spec.suspend) or condition(job, "Suspended")
        reason = self.queue_reason(job, log=log) if suspended and queue_name(job) else None
        return gang_status(name, namespace, workers, job, self._job_pods(job), queue_reason=reason)

    def _read_job(self, name: str, namespace: str) -> V1Job | None:
        return self._read_or_none(
            "jobs.batch", self.kube_hook.batch_v1_client.read_namespaced_job, name, namespace
        )

    def _job_pods(self, job: V1Job) -> list[V1Pod]:
        return self._gang_pods(job.metadata.name, job.metadata.namespace, owner_uid=job.metadata.uid)

    def queue_reason(self, job: V1Job, *, log: Any = None) -> str | None:
        """
        Why Kueue has not admitted ``job`` yet, from the conditions of its Workload; None when that
        cannot be known.

        Best effort: a Workload that cannot be read (403: the optional RBAC rule is missing; 404:
        Kueue's API is not installed) is said once, at INFO, and not asked for again by this hook;
        any other error gives None for this poll. Never raises.
        """
        if self._workloads_unreadable:
            return None
        namespace = job.metadata.namespace
        try:
            listed = self.kube_hook.custom_object_client.list_namespaced_custom_object(
                group=KUEUE_GROUP,
                version=KUEUE_VERSION,
                namespace=namespace,
                plural="workloads",
                label_selector=f"{KUEUE_JOB_UID_LABEL}={job.metadata.uid}",
            )
        except Exception as err:
            code = status_of(err)
            if code in (403, 404):
                self._workloads_unreadable = True
                (log or self.log).info(
                    "Cannot read Kueue Workloads in namespace %s (%s %s): the task log names the gang's "
                    "LocalQueue but not why Kueue holds it. Allow %s to see the reason (%s).",
                    namespace,
                    code,
                    server_message(err),
                    rules_text(OPTIONAL_RBAC_RULES),
                    RBAC_DOC,
                )
            else:
                self.log.debug("Reading the Kueue Workload of Job %s failed: %s", job.metadata.name, err)
            return None
        items = list((listed or {}).get("items") or [])
        if not items:
            return "Kueue has not made a Workload for the Job yet (is Kueue running in the cluster?)"
        return workload_reason(items[-1])

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
        admission_timeout: float | None = None,
        log: Any = None,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> dict[str, Any]:
        """
        Poll the gang in this process until it succeeds, fails, or is not admitted or started in time.

        The same policy, events and log lines as the deferrable
        :class:`~airflow_ml_provider.triggers.training_gang.TrainingGangTrigger` (:class:`GangWatch`).

        :param name: the gang's name (Job and Service).
        :param namespace: its namespace.
        :param workers: the gang size.
        :param started_at: when the gang was launched, Unix seconds.
        :param start_timeout: seconds by which every worker must run, from the Job's start
            (``status.startTime``: its creation, or its admission by Kueue) or else ``started_at``;
            None waits for ever.
        :param poll_interval: seconds between polls.
        :param error_timeout: seconds of uninterrupted API errors before an ``error`` event; None
            for ``max(300, 5 * poll_interval)``.
        :param admission_timeout: seconds a suspended Job may wait for Kueue's admission (counted
            from its suspension, so again after a preemption); None waits for ever.
        :param log: where phase changes (INFO) and poll errors (WARNING) go; the hook's by default.
        :param sleep: how to wait between polls.
        :return: the event, ``{"status", "name", "namespace", "message"}``, status ``success``,
            ``failed``, ``start_timeout``, ``admission_timeout`` or ``error``.
        """
        log = log or self.log
        watch = GangWatch(
            name,
            namespace,
            started_at=started_at,
            start_timeout=start_timeout,
            poll_interval=poll_interval,
            error_timeout=error_timeout,
            admission_timeout=admission_timeout,
            kubernetes_conn_id=self.kubernetes_conn_id,
            log=log,
        )
        while True:
            try:
                gang = self.status(name, namespace, workers, log=log)
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

        The newest pod of each index of the gang's current Job when it exists, else of every pod
        with the gang label. A pod whose log cannot be read (not started, gone, forbidden) gets
        one line saying why.
        """
        job = self._read_job(name, namespace)
        pods = newest_per_index(
            self._gang_pods(name, namespace, owner_uid=job.metadata.uid if job is not None else None)
        )
        pods.sort(key=lambda p: (0 if p.status and p.status.phase == "Failed" else 1, pod_index(p)))
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
            code = status_of(err)
            if code is None:
                raise
            return [f"(log of pod {pod.metadata.name} not available: {code} {server_message(err)})"]
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
        admission_timeout: float | None = None,
        log: Any = None,
    ) -> None:
        """
        Act on the final event of a step's Job (from :meth:`wait` or the trigger).

        Success: log the pods' last lines and remove a gang's Service (the Job and its pods stay
        until their TTL, for their logs). An unreachable API (``error``): leave the Job, a retry
        reattaches to it. Otherwise (failed, not started or not admitted in time) delete the Job
        and raise :class:`TrainingJobFailed` with the failing pods' last lines.

        :param event: ``{"status", "name", "namespace", "message"}``.
        :param what: what the Job is called in the error, e.g. ``"Training gang x in namespace ml"``.
        :param gang: the Job has a headless Service.
        :param start_timeout: the start timeout the wait used, for the message.
        :param report: the task's MLflow run, for the message.
        :param admission_timeout: the admission timeout the wait used, for the message.
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
        # a Job still waiting for Kueue has no pods to read
        tails = {} if status == "admission_timeout" else self.log_tail(name, namespace, lines=LOG_TAIL_LINES)
        self.delete(name, namespace)
        if status == "start_timeout":
            reason = message.removeprefix(start_timeout_text(start_timeout))
            message = f"did not fully start within {start_timeout:.0f} s, so it was deleted: {reason}"
        elif status == "admission_timeout":
            wait = admission_timeout if admission_timeout is not None else 0.0
            reason = message.removeprefix(admission_timeout_text(wait))
            message = f"was not admitted by Kueue within {wait:g} s, so it was deleted: {reason}"
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
            if status_of(err) != 404:
                raise
            return False

    def _wait_gone(self, name: str, namespace: str, timeout: float, poll_interval: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            job = self._read_job(name, namespace)
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


# -- waiting: one policy for the synchronous wait and the trigger ----------------------------------
