"""
A gang's per-index restarts and Kueue admission, as TrainingGangHook reads them, against the fake
API server playing what a cluster does with the Job the launcher builds (``indexed_job``): its own
``podFailurePolicy``, ``backoffLimitPerIndex``, ``maxFailedIndexes`` and ``podReplacementPolicy``
decide each pod failure, and a Job of a Kueue LocalQueue waits suspended until admitted.

Each scenario is fed poll by poll to the one wait policy (:class:`GangWatch`), so the task log's
lines are checked without sleeping; the timed parts (a pod terminating) wait on the fake.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.fake_kubernetes import FakeKubernetes, fake_kubernetes_connection

from airflow_ml_provider.exceptions import TrainingJobFailed
from airflow_ml_provider.hooks.kubernetes import GangStatus, GangWatch, TrainingGangHook
from airflow_ml_provider.runners.kubernetes_objects import GangPodSettings, headless_service, indexed_job

pytestmark = pytest.mark.integration

NAME = "train-9c3e5a7b10"
NS = "ml"
QUEUE = "team-a"
LOGGER = "tests.gang_restarts"
RESTARTS = "the whole gang restarts, from its last checkpoint if it keeps one"
WAITING = (
    f"waiting for Kueue admission in LocalQueue {QUEUE}: couldn't assign flavors to pod set main: "
    "insufficient unused quota for nvidia.com/gpu in flavor gpu-a100, 2 more needed"
)
FAILURE_COUNT = "batch.kubernetes.io/job-index-failure-count"
IGNORED_COUNT = "batch.kubernetes.io/job-index-ignored-failure-count"


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubernetes]:
    with fake_kubernetes_connection(monkeypatch) as fake:
        yield fake


def launch(queue: str | None = None, workers: int = 3, restarts: int = 3) -> TrainingGangHook:
    settings = GangPodSettings(
        image="registry.example.com/ml/steps:0.1.0",
        namespace=NS,
        workers=workers,
        gpus=1,
        queue_name=queue,
        worker_restarts=restarts,
    )
    hook = TrainingGangHook()
    hook.launch(indexed_job(NAME, "train_model", {"epochs": 3}, settings), headless_service(NAME, settings))
    return hook


class Watcher:
    """A GangWatch fed poll by poll from the hook, its log lines captured."""

    def __init__(self, hook: TrainingGangHook, caplog: pytest.LogCaptureFixture, **timeouts: Any) -> None:
        self.hook, self.caplog = hook, caplog
        self.log = logging.getLogger(LOGGER)
        self.watch = GangWatch(
            NAME,
            NS,
            started_at=timeouts.get("started_at", time.time()),
            start_timeout=timeouts.get("start_timeout", 60.0),
            admission_timeout=timeouts.get("admission_timeout"),
            poll_interval=1.0,
            log=self.log,
        )
        caplog.set_level(logging.INFO, logger=LOGGER)

    def poll(self, workers: int = 3) -> tuple[GangStatus, dict[str, Any] | None]:
        status = self.hook.status(NAME, NS, workers, log=self.log)
        return status, self.watch.polled(status)

    def lines(self) -> list[str]:
        return [r.getMessage() for r in self.caplog.records if r.name == LOGGER]


def annotations(kube: FakeKubernetes, pod: str) -> dict[str, str]:
    return dict(kube.pods[(NS, pod)]["metadata"]["annotations"])


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the fake did not get there in time"
        time.sleep(0.02)


# -- disruptions: replaced, not counted ---------------------------------------------------------------


def test_an_evicted_worker_is_replaced_once_terminated_without_counting_and_the_gang_runs_on(
    kube: FakeKubernetes, caplog: pytest.LogCaptureFixture
) -> None:
    hook = launch()
    watcher = Watcher(hook, caplog)
    kube.start_pods(NAME, NS)
    assert watcher.poll()[0].phase == "running"
    kube.pod_grace_seconds = 0.3
    evicted = kube.evict(NAME, NS, 1)

    status, event = watcher.poll()
    assert (status.phase, event) == ("restarting", None)
    assert status.message == (
        f"Job {NS}/{NAME}: 2 of 3 workers running; worker 1 (pod {evicted}) was evicted (DisruptionTarget: "
        "EvictionByEvictionAPI: Eviction API: evicting): Kubernetes replaces it without counting it; "
        f"{RESTARTS}."
    )
    # podReplacementPolicy Failed: no second pod of index 1 while the first one terminates
    assert kube.pod_history(NAME, NS, 1) == [] and len(kube.pods) == 3

    wait_for(lambda: len(kube.pod_history(NAME, NS, 1)) == 1)
    (replacement,) = kube.pod_history(NAME, NS, 1)
    assert (NS, evicted) not in kube.pods  # deleted, as an eviction deletes
    assert annotations(kube, replacement)[FAILURE_COUNT] == "0"
    assert annotations(kube, replacement)[IGNORED_COUNT] == "1"
    assert "failed" not in kube.jobs[(NS, NAME)]["status"]  # not counted
    status, _ = watcher.poll()
    assert status.phase == "restarting"
    assert (
        f"worker 1 (pod {replacement}) restarts (after 1 disruption, not counted): Pending: no reason "
        "reported yet" in status.message
    )

    kube.start_pods(NAME, NS, [1])
    assert watcher.poll()[0].phase == "running"
    kube.complete(NAME, NS)
    assert watcher.poll()[1] == {
        "status": "success",
        "name": NAME,
        "namespace": NS,
        "message": f"Job {NS}/{NAME} completed: 3 of 3 workers succeeded.",
    }
    lines = watcher.lines()
    assert [line.split(": ")[0] for line in lines] == [
        f"Training gang {NS}/{NAME} is running",
        f"Training gang {NS}/{NAME} is restarting",
        f"Training gang {NS}/{NAME} is restarting",
        f"Training gang {NS}/{NAME} is running",
        f"Training gang {NS}/{NAME}",
    ]
    assert f"worker 1 (pod {evicted}) was evicted (DisruptionTarget: EvictionByEvictionAPI" in lines[1]


@pytest.mark.parametrize(
    ("reason", "said", "pod_stays"),
    [
        (
            "PreemptionByScheduler",
            "default-scheduler: preempting to accommodate a higher priority pod",
            False,
        ),
        ("TerminationByKubelet", "Pod was terminated in response to imminent node shutdown", True),
    ],
)
def test_every_disruption_is_replaced_without_counting(
    kube: FakeKubernetes, reason: str, said: str, pod_stays: bool
) -> None:
    hook = launch()
    kube.start_pods(NAME, NS)
    disrupted = kube.evict(NAME, NS, 2, reason=reason)
    assert ((NS, disrupted) in kube.pods) is pod_stays  # the kubelet stops a pod; the others delete it
    status = hook.status(NAME, NS, 3)
    assert status.phase == "restarting" and "failed" not in kube.jobs[(NS, NAME)]["status"]
    (replacement,) = [p for p in kube.pod_history(NAME, NS, 2) if p != disrupted]
    assert annotations(kube, replacement)[IGNORED_COUNT] == "1"
    if pod_stays:  # Failed, with the kubelet's reason
        pod = kube.pods[(NS, disrupted)]
        assert (pod["status"]["phase"], pod["status"]["reason"]) == ("Failed", "Terminated")
        assert (
            f"worker 2 (pod {disrupted}) was evicted (DisruptionTarget: {reason}: {said}): Kubernetes replaces "
            f"it without counting it; it restarts as pod {replacement}: Pending" in status.message
        )
    else:  # deleted: only the replacement's annotations tell
        assert f"worker 2 (pod {replacement}) restarts (after 1 disruption, not counted)" in status.message


# -- counted failures: retried up to backoffLimitPerIndex ---------------------------------------------


def test_transient_exits_are_retried_per_index_up_to_the_limit_then_fail_the_gang_naming_it(
    kube: FakeKubernetes, caplog: pytest.LogCaptureFixture
) -> None:
    hook = launch()
    watcher = Watcher(hook, caplog)
    for attempt in (1, 2, 3):
        kube.start_pods(NAME, NS)
        lost = kube.fail_pod(NAME, NS, 1, exit_code=75)
        status, event = watcher.poll()
        assert event is None and status.phase == "restarting"
        assert (
            f"worker 1 (pod {lost}) exited with code 75 (Error): retry {attempt} of 3 of index 1"
            in status.message
        )
        # the other workers lose their peer and exit 75 too: the whole gang restarts
        for index in (0, 2):
            kube.fail_pod(NAME, NS, index, exit_code=75)
        assert kube.jobs[(NS, NAME)]["status"]["failed"] == 3 * attempt
        current = kube.pod_names(NAME, NS)
        assert [annotations(kube, pod)[FAILURE_COUNT] for pod in current] == [str(attempt)] * 3
        status, _ = watcher.poll()
        assert status.message.startswith(f"Job {NS}/{NAME}: 0 of 3 workers running; worker 0 (pod ")
        assert (
            f"worker 1 (pod {lost}) exited with code 75 (Error): retry {attempt} of 3 of index 1; it restarts "
            f"as pod {current[1]}: Pending: no reason reported yet; worker 2 (pod " in status.message
        )

    kube.start_pods(NAME, NS)
    assert watcher.poll()[0].phase == "running"
    last = kube.fail_pod(NAME, NS, 1, exit_code=75)
    status, event = watcher.poll()
    job = kube.jobs[(NS, NAME)]
    assert job["status"]["failedIndexes"] == "1"
    assert event is not None and event["status"] == "failed" and status.failed_pods == (last,)
    assert event["message"] == (
        f"Job {NS}/{NAME} failed: worker 1 (pod {last}) exited with code 75 (Error): index 1 failed 4 times, "
        "beyond its limit of 3 retries (backoffLimitPerIndex), which fails the Job; the Job failed: "
        "MaxFailedIndexesExceeded: Job has exceeded the specified maximal number of failed indexes."
    )
    # maxFailedIndexes 0: the others were stopped, nothing is retried any more
    assert [kube.pods[(NS, p)]["status"]["phase"] for p in kube.pod_names(NAME, NS)] == ["Failed"] * 3
    assert sum(" is restarting: " in line for line in watcher.lines()) == 6


def test_an_application_error_fails_the_gang_at_once_and_conclude_deletes_it(
    kube: FakeKubernetes, caplog: pytest.LogCaptureFixture
) -> None:
    hook = launch()
    kube.start_pods(NAME, NS)
    kube.pod_grace_seconds = 30  # the other workers are still terminating when the task looks
    failed = kube.fail_pod(
        NAME, NS, 0, exit_code=1, log=["Traceback (most recent call last):", "KeyError: 'y'"]
    )
    others = [pod for (_, name), pod in kube.pods.items() if name != failed]
    assert len(others) == 2 and all("deletionTimestamp" in p["metadata"] for p in others)
    assert kube.pod_history(NAME, NS, 0) == [failed]  # no retry

    event = hook.wait(NAME, NS, 3, started_at=time.time(), start_timeout=60, poll_interval=0.05)
    assert event["status"] == "failed"
    assert event["message"].startswith(
        f"Job {NS}/{NAME} failed: worker 0 (pod {failed}) exited with code 1 (Error): an application error: "
        "the Job's pod failure policy fails it without a retry; the Job failed: PodFailurePolicy: Container "
        f"worker for pod {NS}/{failed} failed with exit code 1 matching FailJob rule at index 1."
    )
    condition_types = [c["type"] for c in kube.jobs[(NS, NAME)]["status"]["conditions"]]
    assert condition_types == ["FailureTarget", "Failed"]
    with pytest.raises(TrainingJobFailed) as err:
        hook.conclude(event, what=f"Training gang {NAME}", gang=True, start_timeout=60, report=None)
    assert "an application error" in str(err.value) and "KeyError: 'y'" in str(err.value)
    assert (NS, NAME) not in kube.jobs


# -- Kueue ---------------------------------------------------------------------------------------------


def test_a_queued_gang_waits_with_kueues_reason_until_its_admission_timeout_then_is_deleted(
    kube: FakeKubernetes, caplog: pytest.LogCaptureFixture
) -> None:
    hook = launch(queue=QUEUE)
    job = kube.jobs[(NS, NAME)]
    assert job["spec"]["suspend"] is True and kube.pods == {}
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == QUEUE
    caplog.set_level(logging.INFO, logger=LOGGER)

    event = hook.wait(
        NAME,
        NS,
        3,
        started_at=time.time(),
        start_timeout=0.1,  # not pending: a queued gang has not started, nor timed out starting
        admission_timeout=0.3,
        poll_interval=0.05,
        log=logging.getLogger(LOGGER),
    )
    assert event == {
        "status": "admission_timeout",
        "name": NAME,
        "namespace": NS,
        "message": f"The training gang was not admitted by Kueue within 0.3 s: {WAITING}.",
    }
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert lines[0] == f"Training gang {NS}/{NAME} is queued: {WAITING}."
    assert sum(" is queued: " in line for line in lines) == 1
    (listed,) = {tuple(r.query["labelSelector"]) for r in kube.recorded("GET", "workloads")}
    assert listed == (f"kueue.x-k8s.io/job-uid={job['metadata']['uid']}",)

    with pytest.raises(TrainingJobFailed) as err:
        hook.conclude(
            event,
            what=f"Training gang {NAME}",
            gang=True,
            start_timeout=0.1,
            admission_timeout=0.3,
            report=None,
        )
    assert str(err.value) == (
        f"Training gang {NAME}: was not admitted by Kueue within 0.3 s, so it was deleted: {WAITING}."
    )
    assert kube.jobs == {} and kube.workloads == {} and kube.services == {}


def test_admitted_preempted_and_admitted_again_the_gang_succeeds(
    kube: FakeKubernetes, caplog: pytest.LogCaptureFixture
) -> None:
    hook = launch(queue=QUEUE)
    # launched 100 s ago, as far as the wait knows: the start timeout counts from the admission
    watcher = Watcher(
        hook, caplog, start_timeout=60.0, admission_timeout=3600.0, started_at=time.time() - 100
    )
    status, _ = watcher.poll()
    assert status.phase == "queued" and status.queued_since == pytest.approx(time.time(), abs=5)
    kube.backdate(NAME, NS, 100)  # queued for longer than the start timeout: that does not count

    kube.admit(NAME, NS)
    workload = kube.workload(NAME, NS)
    assert {c["type"]: c["status"] for c in workload["status"]["conditions"]} == {
        "QuotaReserved": "True",
        "Admitted": "True",
    }
    status, event = watcher.poll()
    assert (status.phase, event) == ("pending", None)  # the start timeout counts from the admission
    assert status.start_time == pytest.approx(time.time(), abs=5)
    kube.start_pods(NAME, NS)
    assert watcher.poll()[0].phase == "running"

    kube.preempt(NAME, NS)
    status, event = watcher.poll()
    assert (status.phase, event) == ("queued", None) and kube.pods == {}
    assert status.message.startswith(
        f"{WAITING}; it was evicted before: Preempted: Preempted to accommodate a workload (UID: "
    )
    assert status.message.endswith(", JobUID: " + status.message.split("JobUID: ")[1])
    assert "failed" not in kube.jobs[(NS, NAME)]["status"]  # a preemption is no failure

    kube.admit(NAME, NS)
    kube.start_pods(NAME, NS)
    assert watcher.poll()[0].phase == "running"
    kube.complete(NAME, NS)
    assert (watcher.poll()[1] or {}).get("status") == "success"
    phases = [line.split(": ")[0].rsplit(" ", 1)[-1] for line in watcher.lines()]
    assert phases == ["queued", "pending", "running", "queued", "running", f"{NS}/{NAME}"]


@pytest.mark.parametrize("why", ["forbidden", "not installed"])
def test_unreadable_workloads_fall_back_to_the_queue_name_said_once(
    kube: FakeKubernetes, caplog: pytest.LogCaptureFixture, why: str
) -> None:
    if why == "forbidden":
        kube.forbid("list", "workloads")
    else:
        kube.kueue_installed = False
    hook = launch(queue=QUEUE)
    watcher = Watcher(hook, caplog)
    for _ in range(3):
        status, event = watcher.poll()
        assert (status.phase, event) == ("queued", None)
    assert status.message == f"waiting for Kueue admission in LocalQueue {QUEUE}."
    assert len(kube.recorded("GET", "workloads")) == 1  # not asked again
    said = [r for r in caplog.records if r.name == LOGGER and "Kueue Workloads" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert (
        said[0]
        .getMessage()
        .startswith(f"Cannot read Kueue Workloads in namespace {NS} ({403 if why == 'forbidden' else 404} ")
    )
    assert "workloads.kueue.x-k8s.io: get, list" in said[0].getMessage()


# -- durable reattach ----------------------------------------------------------------------------------


def test_job_ref_and_earlier_outcome(kube: FakeKubernetes) -> None:
    hook = launch(queue=QUEUE)
    ref = hook.job_ref(NAME, NS)
    assert ref == {"name": NAME, "namespace": NS, "uid": kube.jobs[(NS, NAME)]["metadata"]["uid"]}
    assert hook.earlier_outcome(ref) == "active"  # queued
    kube.admit(NAME, NS)
    kube.start_pods(NAME, NS)
    kube.fail_pod(NAME, NS, 1, exit_code=75)
    assert hook.status(NAME, NS, 3).phase == "restarting" and hook.earlier_outcome(ref) == "active"
    kube.start_pods(NAME, NS)
    kube.complete(NAME, NS)
    assert hook.earlier_outcome(ref) == "succeeded"
    hook.delete(NAME, NS)
    assert hook.earlier_outcome(ref) == "gone" and hook.job_ref(NAME, NS) is None
    launch()
    assert hook.earlier_outcome(ref) == "gone"  # a newer Job of the same name is not that one
    kube.start_pods(NAME, NS)
    kube.fail_pod(NAME, NS, 0, exit_code=2)
    assert hook.earlier_outcome(hook.job_ref(NAME, NS) or {}) == "failed"


@pytest.mark.parametrize("phase", ["queued", "restarting"])
def test_a_retry_reattaches_to_a_queued_or_restarting_gang(
    kube: FakeKubernetes, caplog: pytest.LogCaptureFixture, phase: str
) -> None:
    settings = GangPodSettings(
        image="img:1", namespace=NS, workers=2, queue_name=QUEUE if phase == "queued" else None
    )
    job, service = indexed_job(NAME, "train_model", {}, settings), headless_service(NAME, settings)
    hook = TrainingGangHook()
    assert hook.start_or_reattach(job, service) is False
    if phase == "restarting":
        kube.start_pods(NAME, NS)
        kube.evict(NAME, NS, 0)
    assert hook.status(NAME, NS, 2).phase == phase
    uid = kube.jobs[(NS, NAME)]["metadata"]["uid"]
    assert hook.start_or_reattach(job, service) is True
    assert kube.jobs[(NS, NAME)]["metadata"]["uid"] == uid and kube.recorded("DELETE") == []
