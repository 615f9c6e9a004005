"""
The one Kubernetes wait policy: ``job_verdict``, ``ErrorPatience`` and ``GangWatch`` on their own,
then ``TrainingGangHook.wait`` and ``start_or_reattach`` against the fake API server.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.fake_kubernetes import FakeKubernetes, fake_kubernetes_connection

from airflow_ml_provider.hooks._gang_status import workload_reason
from airflow_ml_provider.hooks.kubernetes import (
    MAX_BACKOFF_SECONDS,
    MIN_ERROR_TIMEOUT_SECONDS,
    ErrorPatience,
    GangStatus,
    GangWatch,
    KubernetesPermissionError,
    TrainingGangHook,
    job_verdict,
)
from airflow_ml_provider.runners.kubernetes_objects import (
    LABEL_GANG,
    SPEC_ANNOTATION,
    GangPodSettings,
    headless_service,
    indexed_job,
)
from airflow_ml_provider.triggers import training_gang

NAME = "train-5e1b0c7d2a"
NS = "ml"
POLL = 0.05
WAIT_LOGGER = "tests.gang_wait"
DELETED = (
    f"Job {NS}/{NAME} was deleted outside Airflow before it was seen to finish (kubectl delete, a "
    "deleted namespace, or its ttlSecondsAfterFinished ran out while no triggerer watched); its "
    "workers' logs are gone with it."
)


def gang(phase: str, message: str = "what the hook saw.") -> GangStatus:
    return GangStatus(phase, message, 0, 2)


def verdict(phase: str, now: float, start_timeout: float | None = 60.0) -> tuple[str, str] | None:
    return job_verdict(
        gang(phase), name=NAME, namespace=NS, started_at=1000.0, now=now, start_timeout=start_timeout
    )


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


# -- job_verdict ----------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        ("succeeded", ("success", "what the hook saw.")),
        ("failed", ("failed", "what the hook saw.")),
        ("missing", ("failed", DELETED)),
        ("running", None),
        ("pending", None),
    ],
)
def test_every_phase_before_the_start_deadline(phase: str, expected: tuple[str, str] | None) -> None:
    assert verdict(phase, now=1001.0) == expected


@pytest.mark.unit
@pytest.mark.parametrize(
    ("now", "expected"),
    [(1059.999, None), (1060.0, "start_timeout"), (1060.001, "start_timeout")],
)
def test_start_timeout_boundary_is_inclusive(now: float, expected: str | None) -> None:
    result = verdict("pending", now=now)
    assert (result[0] if result else None) == expected


@pytest.mark.unit
def test_start_timeout_message() -> None:
    assert verdict("pending", now=2000.0) == (
        "start_timeout",
        "The training gang did not fully start within 60 s of its launch: what the hook saw.",
    )
    result = job_verdict(
        gang("pending", "x."), name=NAME, namespace=NS, started_at=0.0, now=1.0, start_timeout=0.4
    )
    assert result == ("start_timeout", "The training gang did not fully start within 0.4 s of its launch: x.")


@pytest.mark.unit
@pytest.mark.parametrize("phase", ["running", "pending"])
def test_no_start_timeout_or_a_running_gang_polls_on(phase: str) -> None:
    assert verdict(phase, now=1e12, start_timeout=None) is None
    assert verdict("running", now=1e12) is None


@pytest.mark.unit
@pytest.mark.parametrize("phase", ["succeeded", "failed", "missing"])
def test_final_phases_win_over_the_start_deadline(phase: str) -> None:
    result = verdict(phase, now=1e12)
    assert result is not None and result[0] in ("success", "failed")


@pytest.mark.unit
@pytest.mark.parametrize("phase", ["queued", "restarting"])
def test_a_queued_or_restarting_gang_is_not_pending_so_never_a_start_timeout(phase: str) -> None:
    assert verdict(phase, now=1e12) is None


@pytest.mark.unit
@pytest.mark.parametrize(
    ("start_time", "now", "expected"),
    [
        (None, 1060.0, "start_timeout"),
        (5000.0, 1060.0, None),
        (5000.0, 5059.9, None),
        (5000.0, 5060.0, "start_timeout"),
    ],
)
def test_the_start_timeout_counts_from_the_jobs_start_time_when_kubernetes_set_it(
    start_time: float | None, now: float, expected: str | None
) -> None:
    # Kubernetes resets status.startTime when it resumes a suspended Job (Kueue's admission)
    status = GangStatus("pending", "x.", 0, 2, start_time=start_time)
    result = job_verdict(status, name=NAME, namespace=NS, started_at=1000.0, now=now, start_timeout=60.0)
    assert (result[0] if result else None) == expected


def queued(
    now: float, queued_since: float | None = None, status_since: float | None = 2000.0, **kw: Any
) -> Any:
    status = GangStatus(
        "queued", "waiting for Kueue admission in LocalQueue q.", 0, 2, queued_since=status_since
    )
    return job_verdict(
        status,
        name=NAME,
        namespace=NS,
        started_at=1000.0,
        now=now,
        start_timeout=60.0,
        admission_timeout=kw.get("admission_timeout", 600.0),
        queued_since=queued_since,
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    ("now", "queued_since", "status_since", "expected"),
    [
        (2599.9, None, 2000.0, None),  # from the Suspended condition's transition (status.queued_since)
        (2600.0, None, 2000.0, "admission_timeout"),
        (2600.0, 2500.0, 2000.0, None),  # an explicit queued_since wins
        (3100.0, 2500.0, 2000.0, "admission_timeout"),
        (1600.0, None, None, "admission_timeout"),  # neither: from the launch
    ],
)
def test_admission_timeout_boundary_and_where_the_queue_wait_starts(
    now: float, queued_since: float | None, status_since: float | None, expected: str | None
) -> None:
    result = queued(now, queued_since, status_since)
    assert (result[0] if result else None) == expected


@pytest.mark.unit
def test_admission_timeout_message_and_none_waits_for_ever() -> None:
    assert queued(1e12) == (
        "admission_timeout",
        "The training gang was not admitted by Kueue within 600 s: waiting for Kueue admission in LocalQueue q.",
    )
    assert queued(1e12, admission_timeout=None) is None


@pytest.mark.unit
def test_watch_ends_a_queue_wait_that_outlasts_the_admission_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = watch(logging.getLogger(WAIT_LOGGER), admission_timeout=30.0)
    waiting = GangStatus(
        "queued", "waiting for Kueue admission in LocalQueue q: no quota.", 0, 2, queued_since=100.0
    )
    with caplog.at_level(logging.INFO, logger=WAIT_LOGGER):
        assert w.polled(waiting, now=129.0) is None
        assert w.polled(waiting, now=130.0) == {
            "status": "admission_timeout",
            "name": NAME,
            "namespace": NS,
            "message": "The training gang was not admitted by Kueue within 30 s: waiting for Kueue admission in "
            "LocalQueue q: no quota.",
        }
    assert [r.getMessage() for r in caplog.records][0] == (
        f"Training gang {NS}/{NAME} is queued: waiting for Kueue admission in LocalQueue q: no quota."
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ([], "Kueue has not tried to reserve quota for it yet"),
        (
            [
                {
                    "type": "QuotaReserved",
                    "status": "False",
                    "reason": "Pending",
                    "message": "couldn't assign it.",
                }
            ],
            "couldn't assign it",
        ),
        (
            [
                {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": "no quota"},
                {
                    "type": "Evicted",
                    "status": "True",
                    "reason": "Preempted",
                    "message": "Preempted to accommodate x",
                },
            ],
            "no quota; it was evicted before: Preempted: Preempted to accommodate x",
        ),
        (
            [{"type": "QuotaReserved", "status": "True"}, {"type": "Admitted", "status": "True"}],
            "admitted, the Job is about to be resumed",
        ),
    ],
)
def test_kueues_reason_from_the_workloads_conditions(conditions: list[dict[str, str]], expected: str) -> None:
    assert workload_reason({"status": {"conditions": conditions}}) == expected


# -- ErrorPatience --------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("poll_interval", "error_timeout", "expected"),
    [(10, None, 300.0), (120, None, 600.0), (0.05, None, MIN_ERROR_TIMEOUT_SECONDS), (10, 2, 2.0)],
)
def test_default_timeout(poll_interval: float, error_timeout: float | None, expected: float) -> None:
    assert ErrorPatience(poll_interval, error_timeout).timeout == expected


@pytest.mark.unit
def test_constants_are_re_exported_by_the_trigger_module() -> None:
    assert training_gang.MAX_BACKOFF_SECONDS == MAX_BACKOFF_SECONDS == 60.0
    assert training_gang.MIN_ERROR_TIMEOUT_SECONDS == MIN_ERROR_TIMEOUT_SECONDS == 300.0


@pytest.mark.unit
def test_streak_counts_and_times_from_its_first_error() -> None:
    clock = Clock()
    patience = ErrorPatience(1.0, 10.0, clock=clock)
    assert (patience.count, patience.duration(), patience.exhausted()) == (0, 0.0, False)
    assert patience.add() == 0.0
    clock.now += 4
    assert patience.add() == 4.0 and patience.count == 2
    clock.now += 5.9
    assert not patience.exhausted()
    clock.now += 0.1
    assert patience.exhausted() and patience.duration() == pytest.approx(10.0)
    patience.reset()
    assert (patience.count, patience.duration(), patience.exhausted()) == (0, 0.0, False)
    clock.now += 100
    assert patience.add() == 0.0  # a new streak starts now


@pytest.mark.unit
def test_backoff_doubles_to_sixty_seconds() -> None:
    patience = ErrorPatience(5.0, 10_000.0, clock=Clock())
    delays = []
    for _ in range(6):
        patience.add()
        delays.append(patience.next_delay())
    assert delays == [10.0, 20.0, 40.0, 60.0, 60.0, 60.0]


@pytest.mark.unit
def test_backoff_never_outlasts_the_patience_left() -> None:
    clock = Clock()
    patience = ErrorPatience(0.05, 0.6, clock=clock)
    patience.add()
    assert patience.next_delay() == pytest.approx(0.1)
    clock.now += 0.1
    patience.add()
    assert patience.next_delay() == pytest.approx(0.2)
    clock.now += 0.2
    patience.add()
    assert patience.next_delay() == pytest.approx(0.3)  # 0.4 by the backoff, 0.3 left
    clock.now += 0.5
    assert patience.next_delay() == 0.0


@pytest.mark.unit
def test_a_long_poll_interval_is_not_cut_to_the_backoff_cap() -> None:
    patience = ErrorPatience(120.0, clock=Clock())
    patience.add()
    assert patience.next_delay() == 120.0


# -- GangWatch ------------------------------------------------------------------------------------


def watch(log: logging.Logger, **kwargs: Any) -> GangWatch:
    defaults: dict[str, Any] = {
        "started_at": time.time(),
        "start_timeout": 60.0,
        "poll_interval": 1.0,
        "error_timeout": 30.0,
        "kubernetes_conn_id": "gpu_cluster",
    }
    return GangWatch(NAME, NS, log=log, **{**defaults, **kwargs})


@pytest.mark.unit
def test_watch_logs_each_phase_once_and_the_recovery(caplog: pytest.LogCaptureFixture) -> None:
    w = watch(logging.getLogger(WAIT_LOGGER))
    with caplog.at_level(logging.INFO, logger=WAIT_LOGGER):
        assert w.polled(gang("pending", "a.")) is None
        assert w.polled(gang("pending", "a.")) is None
        assert w.failed(RuntimeError("connection reset")) is None
        assert w.delay == 2.0
        assert w.polled(gang("running", "b.")) is None
        assert w.delay == 1.0
        assert w.polled(gang("succeeded", "done.")) == {
            "status": "success",
            "name": NAME,
            "namespace": NS,
            "message": "done.",
        }
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", f"Training gang {NS}/{NAME} is pending: a."),
        (
            "WARNING",
            f"Polling training gang {NS}/{NAME} failed (1 in a row): RuntimeError: connection reset. "
            "Next try in 2.0 s.",
        ),
        ("INFO", f"Polling training gang {NS}/{NAME} works again after 1 error(s)."),
        ("INFO", f"Training gang {NS}/{NAME} is running: b."),
        ("INFO", f"Training gang {NS}/{NAME}: success: done."),
    ]


@pytest.mark.unit
def test_watch_forbidden_is_an_error_at_once() -> None:
    err = KubernetesPermissionError("list", "pods", NS, "nope")
    event = watch(logging.getLogger(WAIT_LOGGER)).failed(err)
    assert event == {"status": "error", "name": NAME, "namespace": NS, "message": str(err)}


@pytest.mark.unit
def test_watch_gives_up_when_patience_runs_out() -> None:
    w = watch(logging.getLogger(WAIT_LOGGER), error_timeout=0.0)
    event = w.failed(RuntimeError("no route to host"))
    assert event is not None and event["status"] == "error"
    assert event["message"] == (
        f"The Kubernetes API failed on every poll of Job {NS}/{NAME} for 0 s (1 tries through "
        "connection 'gpu_cluster'); last error: RuntimeError: no route to host"
    )


# -- against the fake API server ------------------------------------------------------------------


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubernetes]:
    with fake_kubernetes_connection(monkeypatch) as fake:
        yield fake


def manifests(workers: int = 2, spec: dict[str, Any] | None = None) -> tuple[dict, dict]:
    settings = GangPodSettings(image="registry.example.com/ml/steps:0.1.0", namespace=NS, workers=workers)
    return indexed_job(NAME, "train_model", spec or {"epochs": 2}, settings), headless_service(NAME, settings)


def wait(hook: TrainingGangHook, **kwargs: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "started_at": time.time(),
        "start_timeout": 30.0,
        "poll_interval": POLL,
        "log": logging.getLogger(WAIT_LOGGER),
    }
    return hook.wait(NAME, NS, 2, **{**defaults, **kwargs})


def later(delay: float, action: Callable[[], Any]) -> threading.Timer:
    timer = threading.Timer(delay, action)
    timer.start()
    return timer


@pytest.mark.integration
def test_wait_success_logs_each_phase_once(kube: FakeKubernetes, caplog: pytest.LogCaptureFixture) -> None:
    hook = TrainingGangHook()
    hook.launch(*manifests())
    later(0.2, lambda: kube.start_pods(NAME, NS))
    later(0.5, lambda: kube.complete(NAME, NS))
    with caplog.at_level(logging.INFO, logger=WAIT_LOGGER):
        event = wait(hook)
    assert event == {
        "status": "success",
        "name": NAME,
        "namespace": NS,
        "message": f"Job {NS}/{NAME} completed: 2 of 2 workers succeeded.",
    }
    messages = [r.getMessage() for r in caplog.records if r.name == WAIT_LOGGER]
    assert sum(" is pending: " in m for m in messages) == 1
    assert sum(" is running: " in m for m in messages) == 1
    assert len(kube.recorded("GET", "jobs")) >= 6


@pytest.mark.integration
def test_wait_failed_worker(kube: FakeKubernetes) -> None:
    hook = TrainingGangHook()
    hook.launch(*manifests())
    kube.start_pods(NAME, NS)
    failed = kube.fail_pod(NAME, NS, 0, exit_code=2, reason="Error")
    event = wait(hook)
    assert event["status"] == "failed"
    assert event["message"].startswith(
        f"Job {NS}/{NAME} failed: worker 0 (pod {failed}) exited with code 2 (Error): an application error"
    )


@pytest.mark.integration
def test_wait_start_timeout_from_the_launch(kube: FakeKubernetes) -> None:
    hook = TrainingGangHook()
    hook.launch(*manifests())
    kube.set_pending(NAME, NS, "Unschedulable")
    kube.backdate(NAME, NS, 100)
    slept: list[float] = []
    event = wait(hook, started_at=time.time() - 100, start_timeout=60, sleep=slept.append)
    assert event["status"] == "start_timeout" and slept == []
    assert event["message"].startswith("The training gang did not fully start within 60 s of its launch: ")
    assert "Unschedulable: 0/3 nodes are available" in event["message"]


@pytest.mark.integration
def test_wait_job_deleted_outside_airflow(kube: FakeKubernetes) -> None:
    hook = TrainingGangHook()
    hook.launch(*manifests())
    kube.start_pods(NAME, NS)
    later(0.2, lambda: kube.delete_job_behind_airflows_back(NAME, NS))
    assert wait(hook) == {"status": "failed", "name": NAME, "namespace": NS, "message": DELETED}


@pytest.mark.integration
def test_wait_forbidden_is_an_error_at_once(kube: FakeKubernetes) -> None:
    hook = TrainingGangHook()
    hook.launch(*manifests())
    kube.forbid("list", "pods")
    slept: list[float] = []
    event = wait(hook, error_timeout=60, sleep=slept.append)
    assert event["status"] == "error" and slept == []
    assert event["message"].startswith(f"Kubernetes refused to list pods in namespace {NS!r} (403 Forbidden")


@pytest.mark.integration
def test_wait_persistent_errors_back_off_then_error(
    kube: FakeKubernetes, caplog: pytest.LogCaptureFixture
) -> None:
    hook = TrainingGangHook()
    hook.launch(*manifests())
    kube.requests.clear()
    kube.fail_requests(seconds=60)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    with caplog.at_level(logging.INFO, logger=WAIT_LOGGER):
        event = wait(hook, error_timeout=0.6, sleep=sleep)
    assert event["status"] == "error"
    assert event["message"].startswith(f"The Kubernetes API failed on every poll of Job {NS}/{NAME} for ")
    assert "through connection 'kubernetes_default'" in event["message"]
    assert event["message"].endswith("last error: ServiceException: 500 etcdserver: request timed out")
    assert slept[:2] == [pytest.approx(0.1), pytest.approx(0.2)] and sum(slept) <= 0.6 + 1e-6
    assert 3 <= len(kube.requests) <= 6
    warnings = [r for r in caplog.records if r.name == WAIT_LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == len(slept) and "500 etcdserver: request timed out" in warnings[0].getMessage()


@pytest.mark.integration
def test_wait_rides_out_transient_errors(kube: FakeKubernetes, caplog: pytest.LogCaptureFixture) -> None:
    hook = TrainingGangHook()
    hook.launch(*manifests())
    kube.start_pods(NAME, NS)
    kube.fail_requests(count=3)
    later(0.8, lambda: kube.complete(NAME, NS))
    with caplog.at_level(logging.INFO, logger=WAIT_LOGGER):
        event = wait(hook, error_timeout=5)
    assert event["status"] == "success"
    messages = [r.getMessage() for r in caplog.records if r.name == WAIT_LOGGER]
    assert sum("failed (" in m for m in messages) == 3
    assert any("works again after 3 error(s)" in m for m in messages)


@pytest.mark.integration
@pytest.mark.parametrize("scenario", ["failed", "deleted", "start_timeout"])
def test_wait_and_trigger_send_the_same_event(kube: FakeKubernetes, scenario: str) -> None:
    hook = TrainingGangHook()
    hook.launch(*manifests())
    if scenario == "failed":
        kube.start_pods(NAME, NS)
        kube.fail_pod(NAME, NS, 1, exit_code=2)
    elif scenario == "deleted":
        kube.delete_job_behind_airflows_back(NAME, NS)
    else:
        kube.set_pending(NAME, NS, "ImagePullBackOff")
        kube.backdate(NAME, NS, 100)
    started = time.time() - 100
    trigger = training_gang.TrainingGangTrigger(
        NAME, NS, 2, kubernetes_conn_id="kubernetes_default", started_at=started, start_timeout=60
    )

    async def first_event() -> dict[str, Any]:
        return dict((await trigger.run().__anext__()).payload)

    assert asyncio.run(first_event()) == wait(hook, started_at=started, start_timeout=60)


# -- start_or_reattach ------------------------------------------------------------------------------


def start(caplog: pytest.LogCaptureFixture, job: dict, service: dict | None) -> tuple[bool, list[str]]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=WAIT_LOGGER):
        result = TrainingGangHook().start_or_reattach(job, service, log=logging.getLogger(WAIT_LOGGER))
    return result, [r.getMessage() for r in caplog.records if r.name == WAIT_LOGGER]


@pytest.mark.integration
def test_start_a_new_gang(kube: FakeKubernetes, caplog: pytest.LogCaptureFixture) -> None:
    reattached, messages = start(caplog, *manifests())
    assert reattached is False
    assert messages == [f"Started gang {NAME}: Job of 2 pod(s) in {NS}"]
    assert len(kube.recorded("POST", "jobs")) == 1 and len(kube.recorded("POST", "services")) == 1
    assert kube.recorded("DELETE") == []


@pytest.mark.integration
@pytest.mark.parametrize("running", [False, True])
def test_reattach_to_a_live_gang_of_the_same_spec(
    kube: FakeKubernetes, caplog: pytest.LogCaptureFixture, running: bool
) -> None:
    start(caplog, *manifests())
    if running:
        kube.start_pods(NAME, NS)
    uid = kube.jobs[(NS, NAME)]["metadata"]["uid"]
    reattached, messages = start(caplog, *manifests())
    assert reattached is True
    assert messages == [f"Reattached to gang {NAME} in {NS}: it is still running this spec"]
    assert len(kube.recorded("POST", "jobs")) == 1 and kube.recorded("DELETE") == []
    assert kube.jobs[(NS, NAME)]["metadata"]["uid"] == uid
    assert len(kube.recorded("GET", "pods")) == 1  # one status read, for the wait to make the second


def _finish(kube: FakeKubernetes, how: str) -> None:
    kube.start_pods(NAME, NS)
    if how == "failed":
        kube.fail_pod(NAME, NS, 0, job_failed=True)
    else:
        kube.complete(NAME, NS)


@pytest.mark.integration
@pytest.mark.parametrize("phase", ["failed", "succeeded"])
def test_a_finished_gang_is_replaced(
    kube: FakeKubernetes, caplog: pytest.LogCaptureFixture, phase: str
) -> None:
    start(caplog, *manifests())
    _finish(kube, phase)
    old_uid = kube.jobs[(NS, NAME)]["metadata"]["uid"]
    reattached, messages = start(caplog, *manifests())
    assert reattached is False
    assert messages == [
        f"Replacing gang {NAME} of an earlier try: it is {phase}",
        f"Started gang {NAME}: Job of 2 pod(s) in {NS}",
    ]
    assert kube.jobs[(NS, NAME)]["metadata"]["uid"] != old_uid
    assert len(kube.recorded("POST", "jobs")) == 2 and len(kube.pods) == 2
    assert TrainingGangHook().status(NAME, NS, 2).phase == "pending"


@pytest.mark.integration
def test_a_gang_of_another_spec_is_replaced(kube: FakeKubernetes, caplog: pytest.LogCaptureFixture) -> None:
    start(caplog, *manifests(spec={"epochs": 2}))
    kube.start_pods(NAME, NS)
    reattached, messages = start(caplog, *manifests(spec={"epochs": 99}))
    assert reattached is False
    assert messages[0] == f"Replacing gang {NAME} of an earlier try: it ran another spec"
    annotation = kube.jobs[(NS, NAME)]["spec"]["template"]["metadata"]["annotations"][SPEC_ANNOTATION]
    assert annotation == '{"epochs": 99}'


@pytest.mark.integration
def test_a_gang_of_another_size_is_replaced(kube: FakeKubernetes, caplog: pytest.LogCaptureFixture) -> None:
    start(caplog, *manifests(workers=3))
    reattached, messages = start(caplog, *manifests(workers=2))
    assert reattached is False
    assert messages[0] == f"Replacing gang {NAME} of an earlier try: it has 3 workers, this try asks for 2"
    assert kube.jobs[(NS, NAME)]["spec"]["completions"] == 2 and len(kube.pods) == 2


@pytest.mark.integration
def test_a_job_of_the_gang_without_a_spec_annotation_is_replaced(
    kube: FakeKubernetes, caplog: pytest.LogCaptureFixture
) -> None:
    job, service = manifests()
    earlier = indexed_job(NAME, "train_model", {}, GangPodSettings(image="img:1", namespace=NS, workers=2))
    del earlier["spec"]["template"]["metadata"]["annotations"]
    kube.put_job(earlier)
    reattached, messages = start(caplog, job, service)
    assert reattached is False
    assert messages[0] == f"Replacing gang {NAME} of an earlier try: it ran another spec"


@pytest.mark.integration
def test_someone_elses_job_is_refused_not_deleted(
    kube: FakeKubernetes, caplog: pytest.LogCaptureFixture
) -> None:
    job, service = manifests()
    kube.put_job({**job, "metadata": {"name": NAME, "namespace": NS, "labels": {"team": "search"}}})
    with pytest.raises(ValueError, match=f"A Job named {NAME!r} already exists in namespace {NS!r}"):
        start(caplog, job, service)
    assert kube.recorded("DELETE") == [] and (NS, NAME) in kube.jobs


@pytest.mark.integration
def test_a_single_pod_job_needs_no_service(kube: FakeKubernetes, caplog: pytest.LogCaptureFixture) -> None:
    job, _ = manifests(workers=1)
    assert start(caplog, job, None) == (False, [f"Started gang {NAME}: Job of 1 pod(s) in {NS}"])
    assert kube.recorded("POST", "services") == [] and kube.services == {}
    assert kube.jobs[(NS, NAME)]["metadata"]["labels"][LABEL_GANG] == NAME
    kube.start_pods(NAME, NS)
    assert start(caplog, job, None)[0] is True
    assert kube.recorded("POST", "services") == []
    later(0.2, lambda: kube.complete(NAME, NS))
    event = TrainingGangHook().wait(NAME, NS, 1, started_at=time.time(), start_timeout=30, poll_interval=POLL)
    assert event["status"] == "success"
    TrainingGangHook().delete(NAME, NS, wait=True, poll_interval=POLL)  # no Service to delete: fine
    assert kube.jobs == {} and kube.pods == {}
