"""
A fake Kubernetes API server, just enough of it for the training gang's Job, Service and pods, and
Kueue's Workloads.

The real ``kubernetes`` client, through the real cncf ``KubernetesHook``, talks HTTP to it: the
connection's ``kube_config`` extra points at ``http://127.0.0.1:<port>``. What the server does on
its own is what the API server and the controllers would do at once (see
:mod:`support.fake_job_controller`): creating an Indexed Job fills in Kubernetes' defaults and
creates its ``completions`` pods (phase Pending), or, created suspended, a Suspended condition and
for a Kueue LocalQueue's Job a Workload; a failed or evicted pod is replaced, counted or not, or
fails its index or the Job, as the Job's own ``podFailurePolicy`` and ``backoffLimitPerIndex``
say; deleting a Job with propagation Background or Foreground deletes its pods (the batch/v1
default, with no policy, orphans them, as in Kubernetes), at once or, with ``pod_grace_seconds``,
after that long terminating (with a ``deletionTimestamp``). Everything else (pods starting,
failing, being evicted, completing, pending reasons, Kueue admitting or preempting) is driven by
the test.

Errors come back as Kubernetes ``Status`` bodies: 404 NotFound (Kueue's API too, while
``kueue_installed`` is False), 409 AlreadyExists, 403 Forbidden (:meth:`FakeKubernetes.forbid`),
400 for the log of a container that never started, and 500 InternalError while
:meth:`FakeKubernetes.fail_requests` says so.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from support.fake_job_controller import (
    CONTROLLER_UID_KEYS,
    INDEX_KEY,
    JOB_NAME_KEYS,
    KUEUE_API_VERSION,
    QUEUE_LABEL,
    QUEUE_MESSAGE,
    JobController,
    condition,
    container_status,
    earlier,
    index_of,
    key,
    now,
    set_condition,
    terminated,
    with_defaults,
)

__all__ = ["INDEX_KEY", "FakeKubernetes", "Recorded", "fake_kubernetes_connection", "status_body"]

_ROUTE = re.compile(
    r"^/(?:api/v1|apis/(?P<group>batch)/v1|apis/(?P<kueue>kueue\.x-k8s\.io)/v1beta1)/namespaces/(?P<ns>[^/]+)/"
    r"(?P<resource>jobs|services|pods|workloads)(?:/(?P<name>[^/]+))?(?:/(?P<sub>status|log))?$"
)
_VERBS = {"POST": "create", "DELETE": "delete"}
# What the container-waiting reasons look like on a real cluster.
WAITING_MESSAGES = {
    "ImagePullBackOff": 'Back-off pulling image "{image}"',
    "ErrImagePull": 'failed to pull and unpack image "{image}": not found',
    "CreateContainerConfigError": 'secret "mlflow-credentials" not found',
    "ContainerCreating": "",
}
UNSCHEDULABLE_MESSAGE = (
    "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: "
    "3 No preemption victims found for incoming pod."
)


@dataclass(frozen=True)
class Recorded:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


def status_body(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A Kubernetes ``Status`` object, as the API server returns it with an error."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


class ApiError(Exception):
    """Raised inside a handler; becomes a Status response."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.body = status_body(code, reason, message, details)


def _kind(resource: str, group: str | None) -> str:
    return f"{resource}.{group}" if group else resource


class FakeKubernetes(JobController):
    """
    The fake API server. Use as a context manager (starts and stops the server thread).

    :param user: the identity named in 403 messages.
    """

    def __init__(self, user: str = "system:serviceaccount:airflow:airflow-worker") -> None:
        self.user = user
        self.lock = threading.RLock()
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.logs: dict[tuple[str, str], list[str]] = {}
        self.workloads: dict[tuple[str, str], dict[str, Any]] = {}
        # What Kueue says of a Workload it cannot admit (QuotaReserved False).
        self.queue_message = QUEUE_MESSAGE
        # False: Kueue's API is not installed (its paths answer 404).
        self.kueue_installed = True
        self.requests: list[Recorded] = []
        self.forbidden: set[tuple[str, str]] = set()
        self._fail_count = 0
        self._fail_until = 0.0
        self._fail_code = 500
        # Seconds a deleted pod (its Job's deletion, an eviction, a failed or suspended Job's
        # other pods) stays terminating, with a deletionTimestamp, before it goes.
        self.pod_grace_seconds = 0.0
        self._timers: list[threading.Timer] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=lambda: self._server.serve_forever(poll_interval=0.05), name="fake-kubernetes", daemon=True
        )

    # -- lifecycle and connection ---------------------------------------------------------------

    def __enter__(self) -> FakeKubernetes:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for timer in self._timers:
            timer.cancel()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def kube_config(self) -> dict[str, Any]:
        """A kubeconfig (as a dict) whose current context is this server, without credentials."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }

    def connection_json(self) -> str:
        """The Airflow connection (JSON form of ``AIRFLOW_CONN_<ID>``) that points the cncf hook here."""
        return json.dumps({"conn_type": "kubernetes", "extra": {"kube_config": self.kube_config()}})

    # -- test controls --------------------------------------------------------------------------

    def forbid(self, verb: str, resource: str) -> None:
        """Answer ``verb`` (create, get, list, delete) on ``resource`` (jobs, services, pods,
        pods/log, workloads) with 403."""
        with self.lock:
            self.forbidden.add((verb, resource))

    def fail_requests(self, count: int = 0, seconds: float = 0.0, code: int = 500) -> None:
        """Answer the next ``count`` requests, or every request for ``seconds``, with ``code``."""
        with self.lock:
            self._fail_count = count
            self._fail_until = time.monotonic() + seconds if seconds else 0.0
            self._fail_code = code

    def recorded(self, method: str, resource: str | None = None) -> list[Recorded]:
        """The requests with ``method`` (and a path ending in ``/<resource>`` or ``/<resource>/<name>``)."""
        with self.lock:
            out = [r for r in self.requests if r.method == method]
        if resource is None:
            return out
        return [r for r in out if (m := _ROUTE.match(r.path)) and m["resource"] == resource]

    def pod_names(self, job: str, namespace: str) -> list[str]:
        """The names of ``job``'s current pods (the newest live one of each index), by completion index."""
        with self.lock:
            return [p["metadata"]["name"] for p in self._select(job, namespace, None, strict=False)]

    def pod_history(self, job: str, namespace: str, index: int) -> list[str]:
        """The names of every pod the Job has made for ``index`` and that is still there, oldest first."""
        with self.lock:
            return [p["metadata"]["name"] for p in self._owned(job, namespace) if index_of(p) == index]

    def workload(self, job: str, namespace: str) -> dict[str, Any]:
        """Kueue's Workload of the Job (KeyError without one)."""
        with self.lock:
            found = self._workload_of(self.jobs[(namespace, job)])
            if found is None:
                raise KeyError(f"no Workload for Job {namespace}/{job}")
            return copy.deepcopy(found)

    def backdate(self, job: str, namespace: str, seconds: float) -> None:
        """Make the Job ``seconds`` older: its creation, start and conditions' transitions."""
        with self.lock:
            manifest = self.jobs[(namespace, job)]
            meta, status = manifest["metadata"], manifest["status"]
            meta["creationTimestamp"] = earlier(meta["creationTimestamp"], seconds)
            if "startTime" in status:
                status["startTime"] = earlier(status["startTime"], seconds)
            for cond in status.get("conditions", []):
                cond["lastTransitionTime"] = earlier(cond["lastTransitionTime"], seconds)

    def start_pods(self, job: str, namespace: str, indices: list[int] | None = None) -> None:
        """Schedule and start the current pods at ``indices`` (all by default) that have not ended: phase Running."""
        with self.lock:
            for pod in self._select(job, namespace, indices):
                if pod["status"].get("phase") in ("Succeeded", "Failed"):
                    continue
                pod["status"] = {
                    "phase": "Running",
                    "startTime": now(),
                    "conditions": [
                        {"type": "PodScheduled", "status": "True"},
                        {"type": "Ready", "status": "True"},
                    ],
                    "containerStatuses": [
                        container_status(pod, {"running": {"startedAt": now()}}, ready=True)
                    ],
                }
                self.logs.setdefault(key(pod), [])
            self._update_job(job, namespace)

    def set_pending(
        self,
        job: str,
        namespace: str,
        reason: str,
        message: str | None = None,
        indices: list[int] | None = None,
    ) -> None:
        """
        Keep pods Pending for ``reason``: ``Unschedulable`` (PodScheduled False) or a container
        waiting reason (ImagePullBackOff, ErrImagePull, CreateContainerConfigError, ...).
        """
        with self.lock:
            for pod in self._select(job, namespace, indices):
                if reason == "Unschedulable":
                    text = UNSCHEDULABLE_MESSAGE if message is None else message
                    pod["status"] = {
                        "phase": "Pending",
                        "conditions": [
                            {"type": "PodScheduled", "status": "False", "reason": reason, "message": text}
                        ],
                    }
                else:
                    image = pod["spec"]["containers"][0].get("image", "")
                    text = (
                        WAITING_MESSAGES.get(reason, "").format(image=image) if message is None else message
                    )
                    waiting = {"reason": reason, **({"message": text} if text else {})}
                    pod["status"] = {
                        "phase": "Pending",
                        "conditions": [{"type": "PodScheduled", "status": "True"}],
                        "containerStatuses": [container_status(pod, {"waiting": waiting})],
                    }
            self._update_job(job, namespace)

    def fail_pod(
        self,
        job: str,
        namespace: str,
        index: int,
        exit_code: int = 1,
        reason: str = "Error",
        log: list[str] | None = None,
        job_failed: bool | None = None,
    ) -> str:
        """
        Fail the current pod at ``index``: its container terminated with ``exit_code`` and ``reason``.

        Then the Job controller applies the Job's own policy (``job_failed`` None): a FailJob rule
        fails the Job (its other pods terminated), a counted failure is retried up to
        ``backoffLimitPerIndex`` (a new pod for the index) or fails the index, and the Job with
        it under ``maxFailedIndexes``; a Job without a per-index limit fails past its
        ``backoffLimit``. ``job_failed`` True: the Job fails now whatever its policy (reason
        BackoffLimitExceeded unless a FailJob rule matched; nothing else happens to its pods);
        False: the Job controller has not acted yet. Returns the pod's name.
        """
        with self.lock:
            pod = self._current_pod(job, namespace, index)
            pod["status"] = terminated(pod, exit_code, reason)
            if log is not None:
                self.logs[key(pod)] = list(log)
            else:
                self.logs.setdefault(key(pod), [])
            manifest = self.jobs.get((namespace, job))
            if manifest is not None and job_failed is not False:
                self._pod_failed(manifest, pod, forced=bool(job_failed))
            self._update_job(job, namespace)
            return str(pod["metadata"]["name"])

    def complete(self, job: str, namespace: str) -> None:
        """Every current pod exits 0 and the Job controller marks the Job Complete."""
        with self.lock:
            for pod in self._select(job, namespace, None, strict=False):
                pod["status"] = terminated(pod, 0, "Completed")
                self.logs.setdefault(key(pod), [])
            self._update_job(job, namespace)
            manifest = self.jobs[(namespace, job)]
            message = "Reached expected number of succeeded pods"
            set_condition(manifest, condition("SuccessCriteriaMet", "CompletionsReached", message))
            set_condition(manifest, condition("Complete", "CompletionsReached", message))
            manifest["status"]["completionTime"] = now()

    def set_log(self, job: str, namespace: str, index: int, lines: list[str]) -> None:
        with self.lock:
            self.logs[key(self._current_pod(job, namespace, index))] = list(lines)

    def delete_job_behind_airflows_back(self, job: str, namespace: str) -> None:
        with self.lock:
            pods = self._owned(job, namespace)
            gone = self.jobs.pop((namespace, job), None)
            for pod in pods:
                self.pods.pop(key(pod), None)
            if gone is not None:
                self._forget_workloads(gone["metadata"]["uid"])

    def put_job(self, manifest: dict[str, Any]) -> None:
        """Create a Job directly (someone else's), without pods."""
        with self.lock:
            job = copy.deepcopy(manifest)
            job.setdefault("metadata", {}).update(uid=str(uuid.uuid4()), creationTimestamp=now())
            job["status"] = {}
            self.jobs[(job["metadata"]["namespace"], job["metadata"]["name"])] = job

    # -- state (called with the lock held) -------------------------------------------------------

    def _select(
        self, job: str, namespace: str, indices: list[int] | None, strict: bool = True
    ) -> list[dict[str, Any]]:
        """The current pod (the newest live one) of each of ``indices`` (all by default), by index."""
        newest: dict[int, dict[str, Any]] = {}
        for pod in self._owned(job, namespace):  # oldest first
            newest[index_of(pod)] = pod
        if not newest and strict:
            raise KeyError(f"no pods of Job {namespace}/{job}")
        return [newest[i] for i in sorted(newest) if indices is None or i in indices]

    # -- request handling ------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, body: Any) -> tuple[int, Any]:
        """Answer one request: ``(code, JSON-able body or str for logs)``."""
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        with self.lock:
            self.requests.append(Recorded(method, parts.path, query, body))
            if self._fail_count > 0 or time.monotonic() < self._fail_until:
                self._fail_count = max(0, self._fail_count - 1)
                return self._fail_code, status_body(
                    self._fail_code, "InternalError", "etcdserver: request timed out"
                )
        match = _ROUTE.match(parts.path)
        if not match or (match["kueue"] and not self.kueue_installed):
            return 404, status_body(404, "NotFound", "the server could not find the requested resource")
        ns, resource, name, sub, group = (
            match["ns"],
            match["resource"],
            match["name"],
            match["sub"],
            match["group"] or match["kueue"],
        )
        verb = _VERBS.get(method) or ("get" if name else "list")
        checked = f"{resource}/{sub}" if sub == "log" else resource
        try:
            with self.lock:
                if (verb, checked) in self.forbidden:
                    raise ApiError(
                        403,
                        "Forbidden",
                        f'{_kind(checked, group)} {f"{name!r} " if name else ""}is forbidden: User "{self.user}" '
                        f'cannot {verb} resource "{checked}" in API group "{group or ""}" in the namespace "{ns}"',
                        {"name": name, "group": group or "", "kind": resource}
                        if name
                        else {"group": group or "", "kind": resource},
                    )
                return self._dispatch(method, ns, resource, name, sub, group, query, body)
        except ApiError as err:
            return int(err.body["code"]), err.body

    def _dispatch(
        self,
        method: str,
        ns: str,
        resource: str,
        name: str | None,
        sub: str | None,
        group: str | None,
        query: dict[str, list[str]],
        body: Any,
    ) -> tuple[int, Any]:
        if resource in ("pods", "workloads"):
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", f"{method} {resource} is not implemented by the fake")
            return self._read(ns, resource, name, sub, group, query)
        store = self.jobs if resource == "jobs" else self.services
        if method == "POST" and not name:
            return 201, self._create(store, ns, resource, group, body)
        if method == "GET" and name:
            return 200, self._get(store, ns, name, resource, group)
        if method == "DELETE" and name:
            return 200, self._delete(store, ns, name, resource, group, query, body)
        raise ApiError(405, "MethodNotAllowed", f"{method} {resource} is not implemented by the fake")

    def _read(
        self,
        ns: str,
        resource: str,
        name: str | None,
        sub: str | None,
        group: str | None,
        query: dict[str, list[str]],
    ) -> tuple[int, Any]:
        """GET on pods (a pod, its log, a list) or Kueue's Workloads (one, a list)."""
        if sub == "log" and name:
            return self._log(ns, name, query)
        store = self.pods if resource == "pods" else self.workloads
        if name:
            return 200, self._get(store, ns, name, resource, group)
        if resource == "pods":
            return 200, self._list(store, ns, query, "PodList", "v1")
        return 200, self._list(store, ns, query, "WorkloadList", KUEUE_API_VERSION)

    def _get(
        self,
        store: dict[tuple[str, str], dict[str, Any]],
        ns: str,
        name: str,
        resource: str,
        group: str | None,
    ) -> dict[str, Any]:
        obj = store.get((ns, name))
        if obj is None:
            raise ApiError(
                404,
                "NotFound",
                f'{_kind(resource, group)} "{name}" not found',
                {"name": name, "group": group or "", "kind": resource},
            )
        return copy.deepcopy(obj)

    def _create(
        self,
        store: dict[tuple[str, str], dict[str, Any]],
        ns: str,
        resource: str,
        group: str | None,
        body: Any,
    ) -> dict[str, Any]:
        name = body["metadata"]["name"]
        if (ns, name) in store:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{_kind(resource, group)} "{name}" already exists',
                {"name": name, "group": group or "", "kind": resource},
            )
        obj = copy.deepcopy(body)
        obj["metadata"].update(
            namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=now(), resourceVersion="1"
        )
        store[(ns, name)] = obj
        if resource == "jobs":
            self._start_job(with_defaults(obj))
        return copy.deepcopy(obj)

    def _start_job(self, job: dict[str, Any]) -> None:
        """What the Job controller (and Kueue) do with a new Job: its pods, or for a suspended
        Job a Suspended condition and, in a LocalQueue, a Workload waiting for quota."""
        meta = job["metadata"]
        labels = job["spec"]["template"]["metadata"].setdefault("labels", {})
        labels.update(
            {**dict.fromkeys(JOB_NAME_KEYS, meta["name"]), **dict.fromkeys(CONTROLLER_UID_KEYS, meta["uid"])}
        )
        job["spec"]["selector"] = {"matchLabels": {CONTROLLER_UID_KEYS[0]: meta["uid"]}}
        job["status"] = {}
        if job["spec"]["suspend"]:
            set_condition(job, condition("Suspended", "JobSuspended", "Job suspended"))
            if QUEUE_LABEL in (meta.get("labels") or {}):
                self._queue(job)
        else:
            job["status"]["startTime"] = now()
            self._create_pods(job)
        self._update_job(meta["name"], meta["namespace"])

    def _delete(
        self,
        store: dict[tuple[str, str], dict[str, Any]],
        ns: str,
        name: str,
        resource: str,
        group: str | None,
        query: dict[str, list[str]],
        body: Any,
    ) -> dict[str, Any]:
        obj = self._get(store, ns, name, resource, group)
        pods = [key(p) for p in self._owned(name, ns)] if resource == "jobs" else []
        del store[(ns, name)]
        policy = _first(query, "propagationPolicy") or (body or {}).get("propagationPolicy")
        if resource == "jobs":
            self._forget_workloads(obj["metadata"]["uid"])
        if policy in ("Background", "Foreground"):
            self._terminate(pods)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": group or "", "kind": resource, "uid": obj["metadata"]["uid"]},
        }

    def _list(
        self,
        store: dict[tuple[str, str], dict[str, Any]],
        ns: str,
        query: dict[str, list[str]],
        kind: str,
        api: str,
    ) -> dict[str, Any]:
        wanted = _parse_selector((query.get("labelSelector") or [""])[0])
        items = [
            copy.deepcopy(obj)
            for (obj_ns, _), obj in sorted(store.items())
            if obj_ns == ns and all(obj["metadata"]["labels"].get(k) == v for k, v in wanted.items())
        ]
        return {"kind": kind, "apiVersion": api, "metadata": {"resourceVersion": "1"}, "items": items}

    def _log(self, ns: str, name: str, query: dict[str, list[str]]) -> tuple[int, str]:
        pod = self._get(self.pods, ns, name, "pods", None)
        container = (query.get("container") or [pod["spec"]["containers"][0]["name"]])[0]
        statuses = pod["status"].get("containerStatuses") or []
        state = statuses[0]["state"] if statuses else {}
        if "running" not in state and "terminated" not in state:
            waiting = state.get("waiting", {}).get("reason", "ContainerCreating")
            raise ApiError(
                400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: {waiting}'
            )
        lines = self.logs.get((ns, name), [])
        tail = _first(query, "tailLines")
        if tail is not None:
            lines = lines[-int(tail) :] if int(tail) else []
        return 200, "".join(f"{line}\n" for line in lines)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out as two writes: without this, delayed ACKs add 40 ms to
                # every request on a kept-alive connection.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                code, answer = fake.handle(self.command, self.path, body)
                if isinstance(answer, str):
                    data, kind = answer.encode(), "text/plain"
                else:
                    data, kind = json.dumps(answer).encode(), "application/json"
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the requests are in fake.requests

        return Handler


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _parse_selector(selector: str) -> dict[str, str]:
    wanted = {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.replace("==", "=").partition("=")
        wanted[key.strip()] = value.strip()
    return wanted


@contextlib.contextmanager
def fake_kubernetes_connection(
    monkeypatch: pytest.MonkeyPatch, conn_id: str = "kubernetes_default"
) -> Iterator[FakeKubernetes]:
    """Serve a :class:`FakeKubernetes` and point the Airflow connection ``conn_id`` at it."""
    with FakeKubernetes() as fake:
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", fake.connection_json())
        yield fake
