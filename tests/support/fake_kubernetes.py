"""
A fake Kubernetes API server, just enough of it for the training gang's Job, Service and pods.

The real ``kubernetes`` client, through the real cncf ``KubernetesHook``, talks HTTP to it: the
connection's ``kube_config`` extra points at ``http://127.0.0.1:<port>``. What the server does on
its own is what the API server and the Job controller would do at once: creating an Indexed Job
creates its ``completions`` pods (phase Pending), deleting it with propagation Background or
Foreground deletes them (the batch/v1 default, with no policy, orphans them, as in Kubernetes),
at once or, with ``pod_grace_seconds``, after that long terminating (with a ``deletionTimestamp``).
Everything after that (pods starting, failing, completing, pending reasons) is driven by the test.

Errors come back as Kubernetes ``Status`` bodies: 404 NotFound, 409 AlreadyExists, 403 Forbidden
(:meth:`FakeKubernetes.forbid`), 400 for the log of a container that never started, and 500
InternalError while :meth:`FakeKubernetes.fail_requests` says so.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import secrets
import socket
import string
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

INDEX_KEY = "batch.kubernetes.io/job-completion-index"
JOB_NAME_KEYS = ("batch.kubernetes.io/job-name", "job-name")
CONTROLLER_UID_KEYS = ("batch.kubernetes.io/controller-uid", "controller-uid")

_ROUTE = re.compile(
    r"^/(?:api/v1|apis/(?P<group>batch)/v1)/namespaces/(?P<ns>[^/]+)/(?P<resource>jobs|services|pods)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>status|log))?$"
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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _suffix() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))


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


class FakeKubernetes:
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
        self.requests: list[Recorded] = []
        self.forbidden: set[tuple[str, str]] = set()
        self._fail_count = 0
        self._fail_until = 0.0
        self._fail_code = 500
        # Seconds a deleted Job's pods stay (terminating, with a deletionTimestamp) before they go.
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
        """Answer ``verb`` (create, get, list, delete) on ``resource`` (jobs, services, pods, pods/log) with 403."""
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
        """The names of ``job``'s pods, by completion index."""
        with self.lock:
            pods = self._job_pods(job, namespace)
        return [p["metadata"]["name"] for p in sorted(pods, key=_index)]

    def start_pods(self, job: str, namespace: str, indices: list[int] | None = None) -> None:
        """Schedule and start the pods at ``indices`` (all by default): phase Running."""
        with self.lock:
            for pod in self._select(job, namespace, indices):
                pod["status"] = {
                    "phase": "Running",
                    "startTime": _now(),
                    "conditions": [
                        {"type": "PodScheduled", "status": "True"},
                        {"type": "Ready", "status": "True"},
                    ],
                    "containerStatuses": [
                        _container_status(pod, {"running": {"startedAt": _now()}}, ready=True)
                    ],
                }
                self.logs.setdefault(_key(pod), [])
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
                        "containerStatuses": [_container_status(pod, {"waiting": waiting})],
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
        job_failed: bool = False,
    ) -> str:
        """
        Fail the pod at ``index``: its container terminated with ``exit_code`` and ``reason``.
        With ``job_failed`` the Job controller has also marked the Job Failed (BackoffLimitExceeded).
        Returns the pod's name.
        """
        with self.lock:
            (pod,) = self._select(job, namespace, [index])
            pod["status"] = {
                "phase": "Failed",
                "startTime": _now(),
                "conditions": [{"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [
                    _container_status(
                        pod,
                        {"terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": _now()}},
                    )
                ],
            }
            if log is not None:
                self.logs[_key(pod)] = list(log)
            else:
                self.logs.setdefault(_key(pod), [])
            self._update_job(job, namespace)
            if job_failed:
                self._condition(
                    job,
                    namespace,
                    "Failed",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                )
            return str(pod["metadata"]["name"])

    def complete(self, job: str, namespace: str) -> None:
        """Every pod exits 0 and the Job controller marks the Job Complete."""
        with self.lock:
            for pod in self._job_pods(job, namespace):
                pod["status"] = {
                    "phase": "Succeeded",
                    "conditions": [{"type": "PodScheduled", "status": "True"}],
                    "containerStatuses": [
                        _container_status(pod, {"terminated": {"exitCode": 0, "reason": "Completed"}})
                    ],
                }
                self.logs.setdefault(_key(pod), [])
            self._update_job(job, namespace)
            self._condition(
                job,
                namespace,
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            )
            self._condition(
                job, namespace, "Complete", "CompletionsReached", "Reached expected number of succeeded pods"
            )

    def set_log(self, job: str, namespace: str, index: int, lines: list[str]) -> None:
        with self.lock:
            (pod,) = self._select(job, namespace, [index])
            self.logs[_key(pod)] = list(lines)

    def delete_job_behind_airflows_back(self, job: str, namespace: str) -> None:
        with self.lock:
            self.jobs.pop((namespace, job), None)
            for pod in self._job_pods(job, namespace):
                self.pods.pop(_key(pod), None)

    def put_job(self, manifest: dict[str, Any]) -> None:
        """Create a Job directly (someone else's), without pods."""
        with self.lock:
            job = copy.deepcopy(manifest)
            job.setdefault("metadata", {}).update(uid=str(uuid.uuid4()), creationTimestamp=_now())
            job["status"] = {}
            self.jobs[(job["metadata"]["namespace"], job["metadata"]["name"])] = job

    # -- state (called with the lock held) -------------------------------------------------------

    def _job_pods(self, job: str, namespace: str) -> list[dict[str, Any]]:
        """The live (not terminating) pods of the Job ``job`` (of its current incarnation, if any)."""
        manifest = self.jobs.get((namespace, job))
        uid = manifest["metadata"]["uid"] if manifest else None
        return [
            p
            for (ns, _), p in self.pods.items()
            if ns == namespace
            and p["metadata"]["labels"].get("job-name") == job
            and (uid is None or p["metadata"]["labels"].get("controller-uid") == uid)
            and "deletionTimestamp" not in p["metadata"]
        ]

    def _remove_pods(self, keys: list[tuple[str, str]]) -> None:
        with self.lock:
            for key in keys:
                self.pods.pop(key, None)
                self.logs.pop(key, None)

    def _select(self, job: str, namespace: str, indices: list[int] | None) -> list[dict[str, Any]]:
        pods = sorted(self._job_pods(job, namespace), key=_index)
        if not pods:
            raise KeyError(f"no pods of Job {namespace}/{job}")
        return [p for p in pods if indices is None or _index(p) in indices]

    def _update_job(self, job: str, namespace: str) -> None:
        manifest = self.jobs.get((namespace, job))
        if manifest is None:
            return
        phases = [p["status"].get("phase") for p in self._job_pods(job, namespace)]
        status = manifest.setdefault("status", {})
        status["active"] = sum(1 for ph in phases if ph in ("Pending", "Running"))
        status["ready"] = phases.count("Running")
        for field, phase in (("succeeded", "Succeeded"), ("failed", "Failed")):
            if phases.count(phase):
                status[field] = phases.count(phase)
            else:
                status.pop(field, None)

    def _condition(self, job: str, namespace: str, kind: str, reason: str, message: str) -> None:
        manifest = self.jobs[(namespace, job)]
        conditions = manifest["status"].setdefault("conditions", [])
        conditions.append(
            {
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": _now(),
            }
        )

    def _create_pods(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job["spec"]
        template = spec["template"]
        uid = meta["uid"]
        for index in range(int(spec.get("completions") or 1)):
            name = f"{meta['name']}-{index}-{_suffix()}"
            labels = {
                **template["metadata"].get("labels", {}),
                **dict.fromkeys(JOB_NAME_KEYS, meta["name"]),
                **dict.fromkeys(CONTROLLER_UID_KEYS, uid),
                INDEX_KEY: str(index),
            }
            annotations = {**template["metadata"].get("annotations", {}), INDEX_KEY: str(index)}
            pod_spec = copy.deepcopy(template["spec"])
            pod_spec["hostname"] = f"{meta['name']}-{index}"
            self.pods[(meta["namespace"], name)] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": meta["namespace"],
                    "uid": str(uuid.uuid4()),
                    "labels": labels,
                    "annotations": annotations,
                    "creationTimestamp": _now(),
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "name": meta["name"],
                            "uid": uid,
                            "controller": True,
                        }
                    ],
                },
                "spec": pod_spec,
                "status": {"phase": "Pending"},
            }

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
        if not match:
            return 404, status_body(404, "NotFound", "the server could not find the requested resource")
        ns, resource, name, sub, group = (
            match["ns"],
            match["resource"],
            match["name"],
            match["sub"],
            match["group"],
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
        if resource == "pods":
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", f"{method} pods is not implemented by the fake")
            if sub == "log" and name:
                return self._log(ns, name, query)
            if name:
                return 200, self._get(self.pods, ns, name, "pods", None)
            return 200, self._list_pods(ns, query)
        store = self.jobs if resource == "jobs" else self.services
        if method == "POST" and not name:
            return 201, self._create(store, ns, resource, group, body)
        if method == "GET" and name:
            return 200, self._get(store, ns, name, resource, group)
        if method == "DELETE" and name:
            return 200, self._delete(store, ns, name, resource, group, query, body)
        raise ApiError(405, "MethodNotAllowed", f"{method} {resource} is not implemented by the fake")

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
            namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=_now(), resourceVersion="1"
        )
        if resource == "jobs":
            labels = obj["spec"]["template"]["metadata"].setdefault("labels", {})
            labels.update(
                {
                    **dict.fromkeys(JOB_NAME_KEYS, name),
                    **dict.fromkeys(CONTROLLER_UID_KEYS, obj["metadata"]["uid"]),
                }
            )
            obj["spec"]["selector"] = {"matchLabels": {CONTROLLER_UID_KEYS[0]: obj["metadata"]["uid"]}}
            obj["status"] = {}
            store[(ns, name)] = obj
            self._create_pods(obj)
            self._update_job(name, ns)
        else:
            store[(ns, name)] = obj
        return copy.deepcopy(obj)

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
        del store[(ns, name)]
        policy = _first(query, "propagationPolicy") or (body or {}).get("propagationPolicy")
        if resource == "jobs" and policy in ("Background", "Foreground"):
            pods = [_key(p) for p in self._job_pods(name, ns)]
            if self.pod_grace_seconds:
                for key in pods:
                    self.pods[key]["metadata"]["deletionTimestamp"] = _now()
                timer = threading.Timer(self.pod_grace_seconds, self._remove_pods, [pods])
                timer.daemon = True
                timer.start()
                self._timers.append(timer)
            else:
                self._remove_pods(pods)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": group or "", "kind": resource, "uid": obj["metadata"]["uid"]},
        }

    def _list_pods(self, ns: str, query: dict[str, list[str]]) -> dict[str, Any]:
        wanted = _parse_selector((query.get("labelSelector") or [""])[0])
        items = [
            copy.deepcopy(p)
            for (pod_ns, _), p in sorted(self.pods.items())
            if pod_ns == ns and all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())
        ]
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}

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


def _key(pod: dict[str, Any]) -> tuple[str, str]:
    return (pod["metadata"]["namespace"], pod["metadata"]["name"])


def _index(pod: dict[str, Any]) -> int:
    return int(pod["metadata"]["labels"][INDEX_KEY])


def _container_status(pod: dict[str, Any], state: dict[str, Any], ready: bool = False) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    return {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "started": "running" in state,
        "state": state,
    }


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
