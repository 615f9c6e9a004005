"""
The fake Kubernetes API's controllers: the Job controller (per-index retries under the Job's own
``podFailurePolicy``, ``backoffLimitPerIndex``, ``maxFailedIndexes`` and ``podReplacementPolicy``;
suspension), the pod disruptions (evictions, scheduler preemption, node shutdown), and Kueue
(a Workload per queued Job; admission and preemption).

Everything acts on the manifests as the Job's creator sent them: the tests check what the Job's
own fields do, not a copy of them. Texts (condition reasons and messages) are those Kubernetes
(1.31+: FailureTarget before Failed, whatever the reason) and Kueue (v1beta1 Workloads) write; the
times carry microseconds, where the API server writes whole seconds, so that tests of fractions of
a second are exact. :class:`JobController` is a mixin of
:class:`~support.fake_kubernetes.FakeKubernetes`; the test drives it, each step at once, or after
``pod_grace_seconds`` for pods that terminate (a deleted or evicted pod, with a ``deletionTimestamp``).
"""

from __future__ import annotations

import copy
import secrets
import string
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

INDEX_KEY = "batch.kubernetes.io/job-completion-index"
JOB_NAME_KEYS = ("batch.kubernetes.io/job-name", "job-name")
CONTROLLER_UID_KEYS = ("batch.kubernetes.io/controller-uid", "controller-uid")
FAILURE_COUNT_KEY = "batch.kubernetes.io/job-index-failure-count"
IGNORED_FAILURE_COUNT_KEY = "batch.kubernetes.io/job-index-ignored-failure-count"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
KUEUE_API_VERSION = "kueue.x-k8s.io/v1beta1"
# Kubernetes' own defaults, for a Job that leaves them out.
DEFAULT_BACKOFF_LIMIT = 6
MAX_INT32 = 2**31 - 1
# The DisruptionTarget condition each disruption leaves on a pod (reason: message), as the API
# server's eviction subresource, the default scheduler and the kubelet's node shutdown write them.
DISRUPTION_MESSAGES = {
    "EvictionByEvictionAPI": "Eviction API: evicting",
    "PreemptionByScheduler": "default-scheduler: preempting to accommodate a higher priority pod",
    "TerminationByKubelet": "Pod was terminated in response to imminent node shutdown.",
}
# What Kueue's scheduler says of a Workload it cannot fit (flavorassigner: "insufficient unused quota").
QUEUE_MESSAGE = (
    "couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in flavor "
    "gpu-a100, 2 more needed"
)
SIGTERM_EXIT_CODE = 143


def now(offset: float = 0.0) -> str:
    """RFC 3339, with microseconds (the API server writes whole seconds; sub-second tests need more)."""
    return (datetime.now(UTC) - timedelta(seconds=offset)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def earlier(stamp: str, seconds: float) -> str:
    """The RFC 3339 time ``seconds`` before ``stamp``."""
    when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) - timedelta(seconds=seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def suffix() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))


def key(obj: dict[str, Any]) -> tuple[str, str]:
    return (obj["metadata"]["namespace"], obj["metadata"]["name"])


def index_of(pod: dict[str, Any]) -> int:
    return int(pod["metadata"]["labels"][INDEX_KEY])


def count(pod: dict[str, Any], name: str) -> int:
    return int(pod["metadata"].get("annotations", {}).get(name, "0"))


def condition(kind: str, reason: str, message: str, status: str = "True") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": now()}


def set_condition(obj: dict[str, Any], new: dict[str, Any]) -> None:
    """Add or replace the condition of ``new``'s type; its transition time only moves on a change."""
    conditions = obj.setdefault("status", {}).setdefault("conditions", [])
    old = next((c for c in conditions if c["type"] == new["type"]), None)
    if old is None:
        conditions.append(new)
        return
    if old["status"] == new["status"]:
        new = {**new, "lastTransitionTime": old["lastTransitionTime"]}
    conditions[conditions.index(old)] = new


def container_status(pod: dict[str, Any], state: dict[str, Any], ready: bool = False) -> dict[str, Any]:
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


def terminated(pod: dict[str, Any], exit_code: int, reason: str) -> dict[str, Any]:
    """The status of a pod whose container ended with ``exit_code`` (conditions kept)."""
    return {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "startTime": pod.get("status", {}).get("startTime") or now(),
        "conditions": [
            *(c for c in pod.get("status", {}).get("conditions", []) if c["type"] == "DisruptionTarget"),
            {"type": "PodScheduled", "status": "True"},
        ],
        "containerStatuses": [
            container_status(
                pod, {"terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": now()}}
            )
        ],
    }


def policy_action(spec: dict[str, Any], pod: dict[str, Any]) -> tuple[str | None, str]:
    """
    The Job controller's reading of its ``podFailurePolicy`` for the failed ``pod``: the first
    matching rule's action (None when none matches: the failure counts) and, for a FailJob, the
    Job condition's message as Kubernetes writes it.
    """
    for at, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules", [])):
        if any(_has_condition(pod, p) for p in rule.get("onPodConditions", [])):
            return rule["action"], ""
        matched = _matching_exit_code(pod, rule.get("onExitCodes"))
        if matched is not None:
            name, code = matched
            meta = pod["metadata"]
            return rule["action"], (
                f"Container {name} for pod {meta['namespace']}/{meta['name']} failed with exit code "
                f"{code} matching {rule['action']} rule at index {at}"
            )
    return None, ""


def _has_condition(pod: dict[str, Any], pattern: dict[str, Any]) -> bool:
    wanted = (pattern["type"], pattern.get("status", "True"))
    return any((c["type"], c["status"]) == wanted for c in pod["status"].get("conditions", []))


def _matching_exit_code(pod: dict[str, Any], requirement: dict[str, Any] | None) -> tuple[str, int] | None:
    if not requirement:
        return None
    for status in pod["status"].get("containerStatuses", []):
        code = status["state"].get("terminated", {}).get("exitCode")
        if not code or requirement.get("containerName") not in (None, status["name"]):
            continue  # Kubernetes never matches exit code 0
        if (code in requirement["values"]) == (requirement["operator"] == "In"):
            return status["name"], code
    return None


def with_defaults(job: dict[str, Any]) -> dict[str, Any]:
    """The fields the API server fills in on a Job that leaves them out."""
    spec = job["spec"]
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("parallelism", 1)
    spec.setdefault("suspend", False)
    spec.setdefault("backoffLimit", MAX_INT32 if "backoffLimitPerIndex" in spec else DEFAULT_BACKOFF_LIMIT)
    spec.setdefault("podReplacementPolicy", "Failed" if "podFailurePolicy" in spec else "TerminatingOrFailed")
    return job


class JobController:
    """The controllers' part of :class:`~support.fake_kubernetes.FakeKubernetes` (a mixin)."""

    lock: threading.RLock
    jobs: dict[tuple[str, str], dict[str, Any]]
    pods: dict[tuple[str, str], dict[str, Any]]
    logs: dict[tuple[str, str], list[str]]
    workloads: dict[tuple[str, str], dict[str, Any]]
    pod_grace_seconds: float
    queue_message: str
    _timers: list[threading.Timer]

    # -- test controls --------------------------------------------------------------------------

    def evict(
        self,
        job: str,
        namespace: str,
        index: int,
        reason: str = "EvictionByEvictionAPI",
        message: str | None = None,
    ) -> str:
        """
        Disrupt the pod at ``index``: ``EvictionByEvictionAPI`` (a node drain's eviction),
        ``PreemptionByScheduler`` (a higher-priority pod took its place) or ``TerminationByKubelet``
        (its node shuts down). The pod gets the DisruptionTarget condition; an evicted or preempted
        pod is deleted too (terminating, with a ``deletionTimestamp``, for ``pod_grace_seconds``).
        Once its container has exited (143, SIGTERM) the Job controller applies the Job's policy.
        Returns the pod's name.
        """
        with self.lock:
            pod = self._current_pod(job, namespace, index)
            pod["status"].setdefault("conditions", []).append(
                condition("DisruptionTarget", reason, message or DISRUPTION_MESSAGES[reason])
            )
            deleted = reason != "TerminationByKubelet"
            if deleted:
                pod["metadata"]["deletionTimestamp"] = now()
                pod["metadata"]["deletionGracePeriodSeconds"] = int(self.pod_grace_seconds)
            manifest = self.jobs[(namespace, job)]
            if manifest["spec"].get("podReplacementPolicy") == "TerminatingOrFailed":
                self._pod_failed(manifest, pod)  # replaced while it terminates
            self._later(lambda: self._disrupted_pod_ends(key(pod), deleted))
            self._update_job(job, namespace)
            return str(pod["metadata"]["name"])

    def admit(self, job: str, namespace: str, cluster_queue: str = "cluster-queue") -> None:
        """Kueue admits the Job: its Workload reserves quota, Kueue unsuspends it, its pods are made."""
        with self.lock:
            manifest = self.jobs[(namespace, job)]
            workload = self._workload_of(manifest)
            if workload is not None:
                reserved = f"Quota reserved in ClusterQueue {cluster_queue}"
                set_condition(workload, condition("QuotaReserved", "QuotaReserved", reserved))
                set_condition(workload, condition("Admitted", "Admitted", "The workload is admitted"))
                for kind in ("Evicted", "Preempted"):
                    if any(c["type"] == kind for c in workload["status"]["conditions"]):
                        set_condition(workload, condition(kind, "QuotaReserved", "", status="False"))
                workload["status"]["admission"] = {"clusterQueue": cluster_queue}
            manifest["spec"]["suspend"] = False
            set_condition(manifest, condition("Suspended", "JobResumed", "Job resumed", status="False"))
            manifest["status"]["startTime"] = now()  # Kubernetes restarts the clock of a resumed Job
            self._create_pods(manifest)
            self._update_job(job, namespace)

    def preempt(self, job: str, namespace: str) -> None:
        """Kueue preempts the admitted Job: it suspends it (its pods are deleted, not counted as
        failures) and requeues its Workload, which waits for quota again."""
        with self.lock:
            manifest = self.jobs[(namespace, job)]
            workload = self._workload_of(manifest)
            if workload is not None:
                why = (
                    f"Preempted to accommodate a workload (UID: {uuid.uuid4()}, JobUID: {uuid.uuid4()}) "
                    "due to prioritization in the ClusterQueue"
                )
                set_condition(workload, condition("Evicted", "Preempted", why))
                set_condition(workload, condition("Preempted", "InClusterQueue", why))
                set_condition(
                    workload, condition("QuotaReserved", "Pending", self.queue_message, status="False")
                )
                set_condition(
                    workload,
                    condition("Admitted", "NoReservation", "The workload has no reservation", "False"),
                )
                workload["status"].pop("admission", None)
            self._suspend(manifest)
            self._update_job(job, namespace)

    # -- the Job controller ------------------------------------------------------------------------

    def _pod_failed(self, manifest: dict[str, Any], pod: dict[str, Any], forced: bool = False) -> None:
        """The Job controller sees ``pod`` fail: the Job's policy decides (``forced``: the Job fails)."""
        if _finished(manifest):
            return
        spec, status = manifest["spec"], manifest["status"]
        action, message = policy_action(spec, pod)
        if action == "FailJob":
            status["failed"] = status.get("failed", 0) + 1
            self._fail_job(manifest, "PodFailurePolicy", message)
        elif forced:  # a test's shortcut: the Job failed, whatever its policy (its other pods stay)
            status["failed"] = status.get("failed", 0) + 1
            set_condition(
                manifest,
                condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
            )
        elif action == "Ignore":
            self._replace(manifest, pod, ignored=True)
        else:
            status["failed"] = status.get("failed", 0) + 1
            self._count_failure(manifest, pod, action)

    def _count_failure(self, manifest: dict[str, Any], pod: dict[str, Any], action: str | None) -> None:
        spec, status = manifest["spec"], manifest["status"]
        limit = spec.get("backoffLimitPerIndex")
        if limit is None:
            if status["failed"] > spec.get("backoffLimit", DEFAULT_BACKOFF_LIMIT):
                self._fail_job(
                    manifest, "BackoffLimitExceeded", "Job has reached the specified backoff limit"
                )
            else:
                self._replace(manifest, pod, ignored=False)
        elif action == "FailIndex" or count(pod, FAILURE_COUNT_KEY) + 1 > limit:
            self._fail_index(manifest, index_of(pod))
        else:
            self._replace(manifest, pod, ignored=False)

    def _fail_index(self, manifest: dict[str, Any], index: int) -> None:
        spec, status = manifest["spec"], manifest["status"]
        failed = {int(i) for i in status.get("failedIndexes", "").split(",") if i} | {index}
        status["failedIndexes"] = ",".join(str(i) for i in sorted(failed))
        most = spec.get("maxFailedIndexes")
        if most is not None and len(failed) > most:
            self._fail_job(
                manifest,
                "MaxFailedIndexesExceeded",
                "Job has exceeded the specified maximal number of failed indexes",
            )
        elif len(failed) + status.get("succeeded", 0) >= int(spec.get("completions") or 1):
            self._fail_job(manifest, "FailedIndexes", "Job has failed indexes")

    def _fail_job(self, manifest: dict[str, Any], reason: str, message: str) -> None:
        """FailureTarget, then Failed, and the Job's active pods terminated."""
        set_condition(manifest, condition("FailureTarget", reason, message))
        set_condition(manifest, condition("Failed", reason, message))
        meta = manifest["metadata"]
        self._terminate([key(p) for p in self._owned(meta["name"], meta["namespace"]) if _active(p)])

    def _replace(self, manifest: dict[str, Any], pod: dict[str, Any], *, ignored: bool) -> None:
        """A new pod for ``pod``'s index (once ``pod`` is terminal, with podReplacementPolicy Failed)."""
        if manifest["spec"].get("suspend") or _finished(manifest):
            return
        failures = count(pod, FAILURE_COUNT_KEY) + (0 if ignored else 1)
        ignores = count(pod, IGNORED_FAILURE_COUNT_KEY) + (1 if ignored else 0)
        self._create_pod(manifest, index_of(pod), failures, ignores)

    def _suspend(self, manifest: dict[str, Any]) -> None:
        manifest["spec"]["suspend"] = True
        set_condition(manifest, condition("Suspended", "JobSuspended", "Job suspended"))
        meta = manifest["metadata"]
        # deleted, not failed: a suspension counts against no limit
        self._terminate([key(p) for p in self._owned(meta["name"], meta["namespace"]) if _active(p)])

    def _disrupted_pod_ends(self, pod_key: tuple[str, str], deleted: bool) -> None:
        with self.lock:
            pod = self.pods.get(pod_key)
            if pod is None:
                return
            pod["status"] = terminated(pod, SIGTERM_EXIT_CODE, "Error")
            if not deleted:  # the kubelet stopped it: the pod stays, Failed
                pod["status"].update(reason="Terminated", message=DISRUPTION_MESSAGES["TerminationByKubelet"])
            manifest = self._owner(pod)
            if manifest is not None and manifest["spec"].get("podReplacementPolicy") != "TerminatingOrFailed":
                self._pod_failed(manifest, pod)
            if deleted:
                self.pods.pop(pod_key, None)
                self.logs.pop(pod_key, None)
            if manifest is not None:
                self._update_job(manifest["metadata"]["name"], manifest["metadata"]["namespace"])

    def _terminate(self, keys: list[tuple[str, str]]) -> None:
        """Delete pods: at once, or terminating (``deletionTimestamp``) for ``pod_grace_seconds``."""
        if not self.pod_grace_seconds:
            self._remove_pods(keys)
            return
        for pod_key in keys:
            self.pods[pod_key]["metadata"]["deletionTimestamp"] = now()
        self._later(lambda: self._remove_pods(keys))

    def _remove_pods(self, keys: list[tuple[str, str]]) -> None:
        with self.lock:
            for pod_key in keys:
                self.pods.pop(pod_key, None)
                self.logs.pop(pod_key, None)

    def _later(self, action: Callable[[], None]) -> None:
        """``action`` after ``pod_grace_seconds``; at once without them."""
        if not self.pod_grace_seconds:
            action()
            return
        timer = threading.Timer(self.pod_grace_seconds, action)
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def _create_pods(self, job: dict[str, Any]) -> None:
        """A pod for each index that has none running, succeeded or failed for good."""
        meta, spec = job["metadata"], job["spec"]
        failed = {int(i) for i in job["status"].get("failedIndexes", "").split(",") if i}
        # every pod of the Job, terminating ones too: the index's failures carry over a suspension
        owned = [
            p for p in self.pods.values() if p["metadata"]["labels"].get("controller-uid") == meta["uid"]
        ]
        for index in range(int(spec.get("completions") or 1)):
            earlier_pods = [p for p in owned if index_of(p) == index]
            last = earlier_pods[-1] if earlier_pods else None
            done = last is not None and "deletionTimestamp" not in last["metadata"]
            if index in failed or (done and (last["status"].get("phase") == "Succeeded" or _active(last))):
                continue
            self._create_pod(
                job,
                index,
                count(last, FAILURE_COUNT_KEY) if last else 0,
                count(last, IGNORED_FAILURE_COUNT_KEY) if last else 0,
            )

    def _create_pod(self, job: dict[str, Any], index: int, failures: int = 0, ignored: int = 0) -> None:
        meta, spec = job["metadata"], job["spec"]
        template = spec["template"]
        uid = meta["uid"]
        name = f"{meta['name']}-{index}-{suffix()}"
        labels = {
            **template["metadata"].get("labels", {}),
            **dict.fromkeys(JOB_NAME_KEYS, meta["name"]),
            **dict.fromkeys(CONTROLLER_UID_KEYS, uid),
            INDEX_KEY: str(index),
        }
        annotations = {**template["metadata"].get("annotations", {}), INDEX_KEY: str(index)}
        if spec.get("backoffLimitPerIndex") is not None:
            annotations[FAILURE_COUNT_KEY] = str(failures)
            if ignored:
                annotations[IGNORED_FAILURE_COUNT_KEY] = str(ignored)
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
                "creationTimestamp": now(),
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

    def _owned(self, job: str, namespace: str) -> list[dict[str, Any]]:
        """The live (not terminating) pods of the Job ``job``'s current incarnation, oldest first."""
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

    def _owner(self, pod: dict[str, Any]) -> dict[str, Any] | None:
        labels = pod["metadata"]["labels"]
        manifest = self.jobs.get((pod["metadata"]["namespace"], labels.get("job-name", "")))
        return manifest if manifest and manifest["metadata"]["uid"] == labels.get("controller-uid") else None

    def _current_pod(self, job: str, namespace: str, index: int) -> dict[str, Any]:
        """The newest live pod of ``index``."""
        pods = [p for p in self._owned(job, namespace) if index_of(p) == index]
        if not pods:
            raise KeyError(f"no pod of index {index} of Job {namespace}/{job}")
        return pods[-1]

    def _update_job(self, job: str, namespace: str) -> None:
        """The Job's status counts from its pods (``failed`` and ``failedIndexes`` are the controller's)."""
        manifest = self.jobs.get((namespace, job))
        if manifest is None:
            return
        uid = manifest["metadata"]["uid"]
        owned = [p for p in self.pods.values() if p["metadata"]["labels"].get("controller-uid") == uid]
        live = [p for p in owned if "deletionTimestamp" not in p["metadata"]]
        phases = [p["status"].get("phase") for p in live]
        status = manifest.setdefault("status", {})
        status["active"] = sum(1 for ph in phases if ph in ("Pending", "Running"))
        status["ready"] = phases.count("Running")
        succeeded = len({index_of(p) for p in live if p["status"].get("phase") == "Succeeded"})
        terminating = len(owned) - len(live)
        for field, value in (("succeeded", succeeded), ("terminating", terminating)):
            if value and (field != "terminating" or "podReplacementPolicy" in manifest["spec"]):
                status[field] = value
            else:
                status.pop(field, None)

    # -- Kueue -----------------------------------------------------------------------------------

    def _queue(self, job: dict[str, Any]) -> None:
        """Kueue's Workload for a new Job of a LocalQueue: waiting for quota."""
        meta = job["metadata"]
        name = f"job-{meta['name']}-{suffix()}"
        self.workloads[(meta["namespace"], name)] = {
            "apiVersion": KUEUE_API_VERSION,
            "kind": "Workload",
            "metadata": {
                "name": name,
                "namespace": meta["namespace"],
                "uid": str(uuid.uuid4()),
                "creationTimestamp": now(),
                "labels": {JOB_UID_LABEL: meta["uid"]},
                "ownerReferences": [
                    {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"]}
                ],
            },
            "spec": {
                "queueName": meta["labels"][QUEUE_LABEL],
                "podSets": [{"name": "main", "count": int(job["spec"].get("parallelism") or 1)}],
                "active": True,
            },
            "status": {
                "conditions": [condition("QuotaReserved", "Pending", self.queue_message, status="False")]
            },
        }

    def _workload_of(self, job: dict[str, Any]) -> dict[str, Any] | None:
        uid = job["metadata"]["uid"]
        return next(
            (w for w in self.workloads.values() if w["metadata"]["labels"][JOB_UID_LABEL] == uid), None
        )

    def _forget_workloads(self, job_uid: str) -> None:
        """The garbage collector deletes a deleted Job's Workload (its owner)."""
        for wl_key in [
            k for k, w in self.workloads.items() if w["metadata"]["labels"][JOB_UID_LABEL] == job_uid
        ]:
            del self.workloads[wl_key]


def _active(pod: dict[str, Any]) -> bool:
    return pod["status"].get("phase") in ("Pending", "Running")


def _finished(job: dict[str, Any]) -> bool:
    return any(
        c["type"] in ("Failed", "FailureTarget", "Complete") and c["status"] == "True"
        for c in job.get("status", {}).get("conditions", [])
    )
