"""
The Kubernetes objects of a step in pods: an Indexed Job, and for a gang the headless Service its pods share.

Plain manifests (dicts), so building them imports no Kubernetes client. Every pod runs the step
entrypoint (``python -m airflow_ml_provider.ml <step>``) on a spec delivered as a pod annotation
through a downward-API file, and derives its TF_CONFIG from ``JOB_COMPLETION_INDEX`` and the
``AIRFLOW_ML_*`` variables set here (see ``ml/training/cluster.py``). Pods run as non-root, without
privilege escalation and with all capabilities dropped unless told otherwise.

A gang's Job retries per completion index (``backoffLimitPerIndex``, Kubernetes 1.29+, where it and
``podReplacementPolicy`` are beta and on by default): an index's pod is replaced only once the old
one has terminated (TensorFlow refuses a second task of the same index: "Duplicate task
registration"), a disrupted pod (eviction, preemption, node drain) is replaced without counting,
and an application error (:data:`~airflow_ml_provider.ml.exit_codes.APPLICATION_ERROR_EXIT_CODES`)
fails the Job at once. With a Kueue ``queue_name`` the Job is created suspended, for Kueue to admit.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from airflow_ml_provider import __version__
from airflow_ml_provider.ml.exit_codes import APPLICATION_ERROR_EXIT_CODES
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
#: the Job label that puts it in a Kueue LocalQueue (of the Job's namespace)
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
#: the container's name, which the pod failure policy's exit-code rule names
CONTAINER_NAME = "worker"
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
#: the failures each worker (completion index) of a gang may have before the Job fails
DEFAULT_WORKER_RESTARTS = 3
MAX_WORKER_RESTARTS = 20
# Kubernetes keeps an object's annotations under 256 KiB in all.
MAX_SPEC_BYTES = 200 * 1024
_NAME_CHARS = re.compile(r"[^a-z0-9-]+")
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
# RFC 1123 subdomain (Kubernetes object names); a label value also stays within 63 characters.
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
# An extended resource: a domain-prefixed name, e.g. nvidia.com/gpu, amd.com/gpu, google.com/tpu.
_EXTENDED_RESOURCE = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_AFFINITY_KINDS = ("nodeAffinity", "podAffinity", "podAntiAffinity")


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
        headless Service's DNS names, and the Job retries per worker (``worker_restarts``); a
        single step's pod gets none of these, and its Job fails with its pod.
    :param gpus: accelerators per pod (``gpu_resource``), in the container's limits and requests
        alike (an extended resource cannot be overcommitted); 0 asks for none.
    :param gpu_resource: the extended resource of ``gpus``, e.g. ``amd.com/gpu``.
    :param affinity: the pods' affinity, in Kubernetes' own dict form (``nodeAffinity``,
        ``podAffinity``, ``podAntiAffinity``).
    :param priority_class_name: the pods' PriorityClass.
    :param queue_name: a Kueue LocalQueue of the namespace: the Job carries its label and is
        created suspended, for Kueue to admit (all its pods at once) or preempt.
    :param worker_restarts: a gang's failures per worker (``backoffLimitPerIndex``) before the Job
        fails; an eviction or preemption does not count, an application error fails it at once.
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
    gpus: int = 0
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    queue_name: str | None = None
    worker_restarts: int = DEFAULT_WORKER_RESTARTS

    def check(self) -> None:
        """ValueError naming the first bad setting."""
        self._check_pods()
        check_pod_placement(
            "Kubernetes launcher",
            resources=self.resources,
            node_selector=self.node_selector,
            tolerations=self.tolerations,
            gpus=self.gpus,
            gpu_resource=self.gpu_resource,
            affinity=self.affinity,
            priority_class_name=self.priority_class_name,
            queue_name=self.queue_name,
            worker_restarts=self.worker_restarts,
        )

    def _check_pods(self) -> None:
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


def _bad_int(value: Any, low: int, high: int | None = None) -> bool:
    return (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    )


def _is_name(value: Any, longest: int = 253) -> bool:
    return isinstance(value, str) and len(value) <= longest and _DNS_SUBDOMAIN.fullmatch(value) is not None


def check_pod_placement(
    where: str,
    *,
    resources: Any = None,
    node_selector: Any = None,
    tolerations: Any = None,
    gpus: Any = 0,
    gpu_resource: Any = DEFAULT_GPU_RESOURCE,
    affinity: Any = None,
    priority_class_name: Any = None,
    queue_name: Any = None,
    worker_restarts: Any = DEFAULT_WORKER_RESTARTS,
) -> None:
    """
    ValueError naming the first bad placement setting of the pods (one check for the operators'
    arguments, before anything starts, and for :class:`GangPodSettings`).

    :param where: who is asking, the start of the message, e.g. ``"Task 'train'"``.
    """
    _check_pod_shape(where, resources, node_selector, tolerations, affinity)
    if _bad_int(gpus, 0):
        raise ValueError(f"{where}: gpus must be an int >= 0 (accelerators per pod), got {gpus!r}.")
    if not isinstance(gpu_resource, str) or not _EXTENDED_RESOURCE.fullmatch(gpu_resource):
        raise ValueError(
            f"{where}: gpu_resource must name an extended resource with its domain, e.g. "
            f"{DEFAULT_GPU_RESOURCE!r} or 'amd.com/gpu', got {gpu_resource!r}."
        )
    if gpus:
        given = {
            part: (resources or {}).get(part, {}).get(gpu_resource)
            for part in ("limits", "requests")
            if isinstance((resources or {}).get(part), dict)
        }
        if any(v is not None and str(v) != str(gpus) for v in given.values()):
            raise ValueError(
                f"{where}: the container resources ask for {gpu_resource} {given} and gpus={gpus}; "
                "give the count once (gpus= sets limits and requests)."
            )
    if priority_class_name is not None and not _is_name(priority_class_name):
        raise ValueError(
            f"{where}: priority_class_name must name a PriorityClass (lowercase letters, digits, '-' "
            f"and '.'), got {priority_class_name!r}."
        )
    if queue_name is not None and not _is_name(queue_name, longest=63):
        raise ValueError(
            f"{where}: queue_name must name a Kueue LocalQueue (lowercase letters, digits, '-' and "
            f"'.', at most 63 characters: it is a label value), got {queue_name!r}."
        )
    if _bad_int(worker_restarts, 0, MAX_WORKER_RESTARTS):
        raise ValueError(
            f"{where}: worker_restarts must be an int in 0..{MAX_WORKER_RESTARTS} (failures per "
            f"worker before the gang fails), got {worker_restarts!r}."
        )


def _check_pod_shape(where: str, resources: Any, node_selector: Any, tolerations: Any, affinity: Any) -> None:
    if resources is not None and not (
        isinstance(resources, dict)
        and all(isinstance(resources.get(part, {}), dict) for part in ("limits", "requests"))
    ):
        raise ValueError(
            f"{where}: container resources must be a dict like "
            f"{{'requests': {{'cpu': '2'}}, 'limits': {{'memory': '8Gi'}}}}, got {resources!r}."
        )
    if node_selector is not None and not (
        isinstance(node_selector, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in node_selector.items())
    ):
        raise ValueError(
            f"{where}: node_selector must be a dict of node label names to values (strings), "
            f"got {node_selector!r}."
        )
    if tolerations is not None and not (
        isinstance(tolerations, (list, tuple)) and all(isinstance(t, dict) for t in tolerations)
    ):
        raise ValueError(
            f"{where}: tolerations must be a list of dicts in Kubernetes' form, e.g. "
            f"[{{'key': 'gpu', 'operator': 'Exists', 'effect': 'NoSchedule'}}], got {tolerations!r}."
        )
    if affinity is not None and not (
        isinstance(affinity, dict) and affinity and set(affinity) <= set(_AFFINITY_KINDS)
    ):
        raise ValueError(
            f"{where}: affinity must be a dict in Kubernetes' form with one or more of "
            f"{', '.join(_AFFINITY_KINDS)}, got {affinity!r}."
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
        "name": CONTAINER_NAME,
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
    resources = _resources(settings)
    if resources:
        container["resources"] = resources
    return container


def _resources(settings: GangPodSettings) -> dict[str, Any]:
    """The container's resources: the DAG's or the defaults, with the accelerators added."""
    # No pod without bounds: the defaults unless the DAG gives its own ({} asks for none).
    resources = copy.deepcopy(DEFAULT_RESOURCES if settings.resources is None else settings.resources)
    if settings.gpus:
        # Requests equal to limits: Kubernetes does not overcommit an extended resource.
        for part in ("limits", "requests"):
            resources.setdefault(part, {})[settings.gpu_resource] = str(settings.gpus)
    return resources


def pod_failure_policy() -> dict[str, Any]:
    """
    A gang's pod failure policy, its rules in order: a disrupted pod (evicted, preempted, its node
    drained) is replaced without counting against ``backoffLimitPerIndex``; an application error
    fails the Job at once (retrying would fail again); any other failure (a signal, or
    :data:`~airflow_ml_provider.ml.exit_codes.EXIT_RETRY` from a worker that lost a peer) counts
    against its index's limit, and the index's pod is replaced.
    """
    return {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": CONTAINER_NAME,
                    "operator": "In",
                    "values": sorted(APPLICATION_ERROR_EXIT_CODES),  # Kubernetes wants them ordered
                },
            },
        ]
    }


def indexed_job(
    name: str,
    step: str,
    spec: dict[str, Any],
    settings: GangPodSettings,
    extra_args: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """
    The Indexed Job of the step: ``workers`` pods, all at once; a gang's workers are retried per
    index (``settings.worker_restarts``), a single step's pod is not.

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
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": settings.workers,
        "parallelism": settings.workers,
        **_retries(settings),
        "template": {
            "metadata": {"labels": labels, "annotations": {SPEC_ANNOTATION: spec_text}},
            "spec": _pod_spec(name, step, settings, list(extra_args)),
        },
    }
    if settings.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = int(settings.active_deadline_seconds)
    if settings.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = settings.ttl_seconds_after_finished
    job_labels = dict(labels)
    if settings.queue_name:
        # Kueue admits a suspended Job by unsuspending it; created running, it would start unqueued.
        job_labels[LABEL_KUEUE_QUEUE] = settings.queue_name
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": job_labels},
        "spec": job_spec,
    }


def _pod_spec(name: str, step: str, settings: GangPodSettings, extra_args: list[str]) -> dict[str, Any]:
    """The pod template's spec; ``restartPolicy: Never``, as per-index retries and the failure policy need."""
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [_container(name, step, settings, extra_args)],
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
    if settings.affinity:
        pod_spec["affinity"] = copy.deepcopy(settings.affinity)
    if settings.priority_class_name:
        pod_spec["priorityClassName"] = settings.priority_class_name
    return pod_spec


def _retries(settings: GangPodSettings) -> dict[str, Any]:
    """How the Job retries: a gang per worker (see :func:`pod_failure_policy`), a single step never."""
    if not settings.gang:
        return {"backoffLimit": 0}  # the task's own retries retry a step
    return {
        # A pod's replacement starts once it has terminated: TensorFlow refuses two tasks of one index.
        # (The only value Kubernetes allows with a pod failure policy.)
        "podReplacementPolicy": "Failed",
        # Per worker, with no backoffLimit: Kubernetes then takes no limit on the Job's total failures.
        "backoffLimitPerIndex": settings.worker_restarts,
        # A worker out of restarts fails the gang: a collective cannot go on without it.
        "maxFailedIndexes": 0,
        "podFailurePolicy": pod_failure_policy(),
    }
