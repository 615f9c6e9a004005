"""
The Kubernetes objects of a step in pods: an Indexed Job, and for a gang the headless Service its pods share.

Plain manifests (dicts), so building them imports no Kubernetes client. Every pod runs the step
entrypoint (``python -m airflow_ml_provider.ml <step>``) on a spec delivered as a pod annotation
through a downward-API file, and derives its TF_CONFIG from ``JOB_COMPLETION_INDEX`` and the
``AIRFLOW_ML_*`` variables set here (see ``ml/training/cluster.py``). Pods run as non-root, without
privilege escalation and with all capabilities dropped unless told otherwise.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from airflow_ml_provider import __version__
from airflow_ml_provider.ml.training.cluster import (
    DEFAULT_PORT,
    ENV_JOB_NAME,
    ENV_NAMESPACE,
    ENV_PORT,
    ENV_SERVICE,
    ENV_WORKERS,
    MAX_WORKERS,
)

SPEC_ANNOTATION = "airflow-ml-provider/spec"
SPEC_DIR = "/etc/airflow-ml"
SPEC_FILE = "spec.json"
LABEL_GANG = "airflow-ml-provider/gang"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGED_BY = "airflow-ml-provider"
# Kubernetes keeps an object's annotations under 256 KiB in all.
MAX_SPEC_BYTES = 200 * 1024
_NAME_CHARS = re.compile(r"[^a-z0-9-]+")
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def gang_name(dag_id: str, run_id: str, task_id: str, map_index: int = -1, try_salt: str = "") -> str:
    """
    A deterministic DNS-label name for a task instance's gang, so a retried task finds its Job.

    ``<task>-<digest>``, at most 52 characters: an Indexed Job's pods are named ``<job>-<index>-<random>``
    and their host names ``<job>-<index>`` must stay within 63.
    """
    digest = hashlib.sha256(
        "\x1f".join([dag_id, run_id, task_id, str(map_index), try_salt]).encode()
    ).hexdigest()[:10]
    stem = _NAME_CHARS.sub("-", task_id.lower()).strip("-")[:40].strip("-") or "train"
    return f"{stem}-{digest}"


# The pods' resources when the DAG gives none: a worker never runs without limits.
DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "1", "memory": "2Gi"},
    "limits": {"cpu": "2", "memory": "4Gi"},
}


@dataclass
class GangPodSettings:
    """
    What the pods of a gang look like.

    :param image: the container image holding the TensorFlow stack and this provider.
    :param namespace: where the Job and the Service go.
    :param workers: the gang size (completions = parallelism).
    :param port: the port every worker listens on for the collective ops.
    :param resources: container resources, e.g. ``{"requests": {"cpu": "2"}, "limits": {"nvidia.com/gpu": 1}}``;
        None gives :data:`DEFAULT_RESOURCES` (1-2 CPUs, 2-4 GiB), ``{}`` none at all.
    :param node_selector: node labels the pods require.
    :param tolerations: pod tolerations (Kubernetes' own dict form).
    :param service_account: the pods' service account.
    :param env: extra environment variables of the container.
    :param env_from_secrets: names of Secrets whose keys all become environment variables of the
        container (``envFrom``), e.g. the MLflow credentials (``MLFLOW_TRACKING_USERNAME`` ...).
    :param run_as_user: the non-root user the container runs as (default 1000).
    :param run_as_group: its group (default 1000).
    :param labels: extra labels on the Job, the pods and the Service.
    :param image_pull_secrets: names of image pull secrets.
    :param active_deadline_seconds: the Job fails after this long.
    :param ttl_seconds_after_finished: Kubernetes deletes the finished Job (and its pods, with their
        logs) this long after it ended; None keeps it until deleted. Default one day.
    :param python: the interpreter in the image.
    :param gang: the pods form a gang (training, tuning): they get the collective port and a
        headless Service's DNS names; a single step's pod gets neither.
    """

    image: str
    namespace: str = "default"
    workers: int = 2
    port: int = DEFAULT_PORT
    resources: dict[str, Any] | None = None
    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = None
    service_account: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    env_from_secrets: list[str] = field(default_factory=list)
    run_as_user: int = 1000
    run_as_group: int = 1000
    labels: dict[str, str] = field(default_factory=dict)
    image_pull_secrets: list[str] = field(default_factory=list)
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = 86400
    python: str = "python"
    gang: bool = True

    def check(self) -> None:
        """ValueError naming the first bad setting."""
        if not isinstance(self.image, str) or not self.image.strip():
            raise ValueError(f"Kubernetes launcher: image must name a container image, got {self.image!r}.")
        if (
            isinstance(self.workers, bool)
            or not isinstance(self.workers, int)
            or not 1 <= self.workers <= MAX_WORKERS
        ):
            raise ValueError(
                f"Kubernetes launcher: workers must be an int in 1..{MAX_WORKERS}, got {self.workers!r}."
            )
        if (
            isinstance(self.run_as_user, bool)
            or not isinstance(self.run_as_user, int)
            or self.run_as_user < 1
        ):
            raise ValueError(
                f"Kubernetes launcher: run_as_user must be a non-root uid (>= 1), got {self.run_as_user!r}."
            )
        ttl = self.ttl_seconds_after_finished
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0):
            raise ValueError(
                "Kubernetes launcher: ttl_seconds_after_finished must be an int >= 0 (seconds) or None, "
                f"got {ttl!r}."
            )
        secrets = self.env_from_secrets
        if not isinstance(secrets, (list, tuple)) or not all(
            isinstance(s, str) and _SECRET_NAME.fullmatch(s) for s in secrets
        ):
            raise ValueError(
                "Kubernetes launcher: env_from_secrets must be a list of Secret names (lowercase "
                f"letters, digits, '-' and '.'), got {self.env_from_secrets!r}."
            )


def _labels(name: str, settings: GangPodSettings) -> dict[str, str]:
    return {**settings.labels, LABEL_GANG: name, LABEL_MANAGED: MANAGED_BY}


def headless_service(name: str, settings: GangPodSettings) -> dict[str, Any]:
    """The headless Service that gives each pod of the gang a stable DNS name."""
    labels = _labels(name, settings)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_GANG: name},
            "ports": [{"name": "collective", "port": settings.port, "targetPort": settings.port}],
            # Peers must resolve before they are "ready": the gang forms while the pods start.
            "publishNotReadyAddresses": True,
        },
    }


def _container(name: str, step: str, settings: GangPodSettings, extra_args: list[str]) -> dict[str, Any]:
    env = {
        **settings.env,
        ENV_JOB_NAME: name,
        ENV_SERVICE: name,
        ENV_NAMESPACE: settings.namespace,
        ENV_WORKERS: str(settings.workers),
        ENV_PORT: str(settings.port),
        "PYTHONUNBUFFERED": "1",
    }
    container: dict[str, Any] = {
        "name": "worker",
        "image": settings.image,
        "command": [
            settings.python,
            "-m",
            "airflow_ml_provider.ml",
            step,
            "--spec",
            f"{SPEC_DIR}/{SPEC_FILE}",
            "--result",
            "/tmp/result.json",
            "--provider-version",
            __version__,
            *extra_args,
        ],  # fmt: skip
        "env": [{"name": k, "value": str(v)} for k, v in sorted(env.items())],
        "volumeMounts": [{"name": "spec", "mountPath": SPEC_DIR, "readOnly": True}],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_group,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if settings.gang:
        container["ports"] = [{"name": "collective", "containerPort": settings.port}]
    if settings.env_from_secrets:
        # "env" wins over "envFrom": a Secret cannot override the gang's own variables.
        container["envFrom"] = [{"secretRef": {"name": s}} for s in settings.env_from_secrets]
    # No pod without bounds: the defaults unless the DAG gives its own ({} asks for none).
    resources = DEFAULT_RESOURCES if settings.resources is None else settings.resources
    if resources:
        container["resources"] = resources
    return container


def indexed_job(
    name: str,
    step: str,
    spec: dict[str, Any],
    settings: GangPodSettings,
    extra_args: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """
    The Indexed Job of the step: ``workers`` pods, all at once, none retried on its own.

    :param name: the Job's name (see :func:`gang_name`); a gang's Service has the same name.
    :param step: the step each pod runs.
    :param spec: the step's spec (JSON-able), delivered as an annotation.
    :param settings: what the pods look like.
    :param extra_args: more arguments of the step entrypoint (e.g. ``--mlflow-run``).
    """
    settings.check()
    spec_text = json.dumps(spec, sort_keys=True)
    if len(spec_text.encode()) > MAX_SPEC_BYTES:
        raise ValueError(
            f"Kubernetes launcher: the step's spec is {len(spec_text.encode())} bytes; a pod annotation "
            f"holds at most {MAX_SPEC_BYTES}. Pass large inputs by URI instead."
        )
    labels = _labels(name, settings)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [_container(name, step, settings, list(extra_args))],
        "volumes": [
            {
                "name": "spec",
                "downwardAPI": {
                    "items": [
                        {
                            "path": SPEC_FILE,
                            "fieldRef": {"fieldPath": f"metadata.annotations['{SPEC_ANNOTATION}']"},
                        }
                    ]
                },
            }
        ],
        "securityContext": {"runAsNonRoot": True, "fsGroup": settings.run_as_group},
    }
    if settings.gang:
        pod_spec["subdomain"] = name
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    if settings.node_selector:
        pod_spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in settings.tolerations]
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in settings.image_pull_secrets]
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": settings.workers,
        "parallelism": settings.workers,
        # One failed worker fails the gang: a collective cannot go on without it.
        "backoffLimit": 0,
        "template": {
            "metadata": {"labels": labels, "annotations": {SPEC_ANNOTATION: spec_text}},
            "spec": pod_spec,
        },
    }
    if settings.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = int(settings.active_deadline_seconds)
    if settings.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = settings.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels},
        "spec": job_spec,
    }
