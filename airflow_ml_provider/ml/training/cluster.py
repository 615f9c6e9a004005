"""
TF_CONFIG for multi-worker TensorFlow: from free local ports, or from a Kubernetes Indexed Job.

TensorFlow's multi-worker strategies read the cluster and the process's own place in it from the
``TF_CONFIG`` environment variable: ``{"cluster": {"worker": ["host:port", ...]}, "task":
{"type": "worker", "index": i}}``. Worker 0 acts as the chief (it writes the model and logs to
MLflow) when the cluster has no separate ``chief`` task.

Two sources of that cluster:

- :func:`local_cluster`: N processes on this machine, each on a free localhost port;
- :func:`indexed_job_cluster`: the pods of a Kubernetes Indexed Job with a headless Service, where a
  pod's stable DNS name is ``<job>-<index>.<service>.<namespace>.svc`` and its own index is the
  ``JOB_COMPLETION_INDEX`` environment variable Kubernetes sets.

No TensorFlow import here: the launchers build the environment of processes they start.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TF_CONFIG = "TF_CONFIG"
COMPLETION_INDEX = "JOB_COMPLETION_INDEX"
# What a training pod is told about its gang (set by the Kubernetes launcher).
ENV_JOB_NAME = "AIRFLOW_ML_JOB_NAME"
ENV_SERVICE = "AIRFLOW_ML_SERVICE"
ENV_NAMESPACE = "AIRFLOW_ML_NAMESPACE"
ENV_WORKERS = "AIRFLOW_ML_WORKERS"
ENV_PORT = "AIRFLOW_ML_PORT"
# Overrides the DNS names derived from the Job: for clusters without DNS for the headless Service,
# and to run the pod entrypoint as local processes (the tests do).
ENV_WORKER_ADDRESSES = "AIRFLOW_ML_WORKER_ADDRESSES"
DEFAULT_PORT = 2222
MAX_WORKERS = 256
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class WorkerRole:
    """Where this process sits in the training gang."""

    index: int
    workers: int
    task_type: str = "worker"

    @property
    def is_chief(self) -> bool:
        """Worker 0 is the chief: it exports the model and logs to MLflow."""
        return self.task_type == "chief" or (self.task_type == "worker" and self.index == 0)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that were free on ``host`` a moment ago (held open together)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _check_workers(workers: Any, where: str) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ValueError(
            f"{where}: the number of workers must be an int in 1..{MAX_WORKERS}, got {workers!r}."
        )
    return workers


def local_cluster(workers: int, host: str = "127.0.0.1") -> list[str]:
    """Addresses for ``workers`` processes on this machine, one free port each."""
    _check_workers(workers, "local cluster")
    return [f"{host}:{port}" for port in free_ports(workers, host)]


def indexed_job_cluster(
    job_name: str, service: str, namespace: str, workers: int, port: int = DEFAULT_PORT
) -> list[str]:
    """
    The stable addresses of an Indexed Job's pods behind a headless Service.

    :param job_name: the Job's name; its pods' host names are ``<job_name>-<index>``.
    :param service: the headless Service the pods name as ``subdomain``.
    :param namespace: the namespace of the Job and the Service.
    :param workers: the Job's completions (= parallelism).
    :param port: the port every worker listens on.
    """
    _check_workers(workers, f"Indexed Job {job_name!r}")
    for label, value in (("job name", job_name), ("service", service), ("namespace", namespace)):
        if not isinstance(value, str) or not _DNS_LABEL.fullmatch(value):
            raise ValueError(
                f"Indexed Job cluster: {label} must be a DNS label (lowercase letters, digits, '-', "
                f"at most 63 characters), got {value!r}."
            )
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"Indexed Job cluster: port must be in 1..65535, got {port!r}.")
    return [f"{job_name}-{i}.{service}.{namespace}.svc:{port}" for i in range(workers)]


def tf_config(cluster: list[str], index: int, task_type: str = "worker") -> dict[str, Any]:
    """The TF_CONFIG of the process at ``index`` of a worker-only cluster."""
    if not cluster:
        raise ValueError("TF_CONFIG: the cluster has no workers.")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster):
        raise ValueError(f"TF_CONFIG: index must be in 0..{len(cluster) - 1}, got {index!r}.")
    return {"cluster": {"worker": list(cluster)}, "task": {"type": task_type, "index": index}}


def worker_environments(cluster: list[str]) -> list[dict[str, str]]:
    """The ``TF_CONFIG`` environment of each local worker process, in index order."""
    return [{TF_CONFIG: json.dumps(tf_config(cluster, i))} for i in range(len(cluster))]


def _int_env(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            raise ValueError(f"Training pod: environment variable {name} is not set.")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"Training pod: environment variable {name} must be an integer, got {raw!r}."
        ) from None


def tf_config_from_pod_env(env: Mapping[str, str]) -> dict[str, Any]:
    """
    Derive TF_CONFIG inside a pod of the Indexed Job from its environment.

    Kubernetes sets ``JOB_COMPLETION_INDEX``; the launcher sets ``AIRFLOW_ML_JOB_NAME``,
    ``AIRFLOW_ML_SERVICE``, ``AIRFLOW_ML_NAMESPACE``, ``AIRFLOW_ML_WORKERS`` and optionally
    ``AIRFLOW_ML_PORT``. ``AIRFLOW_ML_WORKER_ADDRESSES`` (comma-separated ``host:port``, one per
    worker) replaces the derived DNS names.
    """
    workers = _int_env(env, ENV_WORKERS)
    index = _int_env(env, COMPLETION_INDEX)
    addresses = [a.strip() for a in env.get(ENV_WORKER_ADDRESSES, "").split(",") if a.strip()]
    if addresses:
        if len(addresses) != workers:
            raise ValueError(
                f"Training pod: {ENV_WORKER_ADDRESSES} lists {len(addresses)} address(es) for "
                f"{workers} workers ({ENV_WORKERS}); give one host:port per worker."
            )
        return tf_config(addresses, index)
    missing = [n for n in (ENV_JOB_NAME, ENV_SERVICE, ENV_NAMESPACE) if not env.get(n)]
    if missing:
        raise ValueError(f"Training pod: environment variable(s) {', '.join(missing)} not set.")
    cluster = indexed_job_cluster(
        env[ENV_JOB_NAME],
        env[ENV_SERVICE],
        env[ENV_NAMESPACE],
        workers,
        _int_env(env, ENV_PORT, DEFAULT_PORT),
    )
    return tf_config(cluster, index)


def role_from_tf_config(raw: str | None) -> WorkerRole:
    """This process's role from a TF_CONFIG value; a lone worker without one."""
    if not raw:
        return WorkerRole(index=0, workers=1)
    try:
        config = json.loads(raw)
        task = config["task"]
        cluster = config["cluster"]
        workers = sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))
        return WorkerRole(index=int(task["index"]), workers=workers, task_type=str(task["type"]))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"TF_CONFIG is not valid: {err}; got {raw[:200]!r}.") from err
