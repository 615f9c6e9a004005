"""TrainingGangTrigger driven for real (``run().asend``) against the fake Kubernetes API server."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.fake_kubernetes import FakeKubernetes, fake_kubernetes_connection

from airflow_ml_provider.hooks.kubernetes import TrainingGangHook
from airflow_ml_provider.runners.kubernetes_objects import GangPodSettings, headless_service, indexed_job
from airflow_ml_provider.triggers.training_gang import TrainingGangTrigger

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

NAME = "train-77c0e1a2b3"
NS = "ml"
POLL = 0.05
LOGGER = "airflow_ml_provider.triggers.training_gang"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the triggerer's event loop


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubernetes]:
    with fake_kubernetes_connection(monkeypatch, conn_id="k8s_training") as fake:
        yield fake


def launch(workers: int = 2, queue: str | None = None) -> None:
    settings = GangPodSettings(
        image="registry.example.com/ml/steps:0.1.0", namespace=NS, workers=workers, queue_name=queue
    )
    TrainingGangHook("k8s_training").launch(
        indexed_job(NAME, "train_model", {}, settings), headless_service(NAME, settings)
    )


def trigger(**kwargs: Any) -> TrainingGangTrigger:
    defaults: dict[str, Any] = {
        "name": NAME,
        "namespace": NS,
        "workers": 2,
        "kubernetes_conn_id": "k8s_training",
        "started_at": time.time(),
        "start_timeout": 30.0,
        "poll_interval": POLL,
    }
    return TrainingGangTrigger(**{**defaults, **kwargs})


async def run_to_event(trig: TrainingGangTrigger, timeout: float = 10.0) -> tuple[dict[str, Any], float]:
    """The trigger's one event and how long it took; the generator must end right after it."""
    start = time.monotonic()
    gen = trig.run()
    event = await asyncio.wait_for(gen.__anext__(), timeout)
    took = time.monotonic() - start
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(gen.__anext__(), 1.0)
    return dict(event.payload), took


def later(delay: float, action: Callable[[], Any]) -> threading.Timer:
    timer = threading.Timer(delay, action)
    timer.start()
    return timer


# -- serialization ------------------------------------------------------------------------------


@pytest.mark.parametrize(("error_timeout", "admission_timeout"), [(None, None), (120.0, 3600.0)])
def test_serialize_round_trip(error_timeout: float | None, admission_timeout: float | None) -> None:
    trig = TrainingGangTrigger(
        name=NAME,
        namespace=NS,
        workers=4,
        kubernetes_conn_id="k8s_training",
        started_at=1_790_000_000.5,
        start_timeout=900,
        poll_interval=15,
        error_timeout=error_timeout,
        admission_timeout=admission_timeout,
    )
    classpath, kwargs = trig.serialize()
    assert classpath == "airflow_ml_provider.triggers.training_gang.TrainingGangTrigger"
    assert kwargs == {
        "name": NAME,
        "namespace": NS,
        "workers": 4,
        "kubernetes_conn_id": "k8s_training",
        "started_at": 1_790_000_000.5,
        "start_timeout": 900,
        "poll_interval": 15,
        "error_timeout": error_timeout,
        "admission_timeout": admission_timeout,
    }
    assert json.loads(json.dumps(kwargs)) == kwargs  # the triggerer stores them in the database
    module, _, cls = classpath.rpartition(".")
    rebuilt = getattr(__import__(module, fromlist=[cls]), cls)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


def test_default_error_timeout_outlasts_an_api_server_restart() -> None:
    assert trigger(poll_interval=10).effective_error_timeout == 300
    assert trigger(poll_interval=120).effective_error_timeout == 600
    assert trigger(error_timeout=2).effective_error_timeout == 2


# -- events ---------------------------------------------------------------------------------------


async def test_success_after_the_gang_ran(kube: FakeKubernetes, caplog: pytest.LogCaptureFixture) -> None:
    launch()
    later(0.2, lambda: kube.start_pods(NAME, NS))
    later(0.5, lambda: kube.complete(NAME, NS))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        event, _ = await run_to_event(trigger())
    assert event == {
        "status": "success",
        "name": NAME,
        "namespace": NS,
        "message": f"Job {NS}/{NAME} completed: 2 of 2 workers succeeded.",
    }
    # each phase logged once, not on every poll (there were about ten polls)
    phases = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert sum(" is pending: " in m for m in phases) == 1
    assert sum(" is running: " in m for m in phases) == 1
    assert len(kube.recorded("GET", "jobs")) >= 6


async def test_failed_worker_fails_with_its_exit_code(kube: FakeKubernetes) -> None:
    launch()
    kube.start_pods(NAME, NS)
    failed = kube.fail_pod(NAME, NS, 1, exit_code=2, reason="Error")  # EXIT_USAGE: no retry
    event, took = await run_to_event(trigger())
    assert event["status"] == "failed" and took < 2
    assert event["message"].startswith(
        f"Job {NS}/{NAME} failed: worker 1 (pod {failed}) exited with code 2 (Error): an application error: "
    )


async def test_gang_that_does_not_start_times_out_with_the_reason(kube: FakeKubernetes) -> None:
    launch()
    kube.start_pods(NAME, NS, [0])
    kube.set_pending(NAME, NS, "ImagePullBackOff", indices=[1])
    stuck = kube.pod_names(NAME, NS)[1]
    event, took = await run_to_event(trigger(started_at=time.time(), start_timeout=0.4))
    assert event["status"] == "start_timeout"
    assert 0.35 < took < 3
    assert event["message"].startswith("The training gang did not fully start within 0.4 s of its launch: ")
    assert (
        f"1 of 2 pods running; 1 not started: {stuck}: ImagePullBackOff: Back-off pulling image"
        in event["message"]
    )


async def test_start_timeout_counts_from_the_launch_not_the_trigger(kube: FakeKubernetes) -> None:
    launch()
    kube.set_pending(NAME, NS, "Unschedulable")
    kube.backdate(NAME, NS, 100)
    # a resumed trigger (triggerer restart) whose deadline passed already fires at its first poll
    event, took = await run_to_event(trigger(started_at=time.time() - 100, start_timeout=60))
    assert event["status"] == "start_timeout" and "Unschedulable: 0/3 nodes are available" in event["message"]
    assert took < 1.5


async def test_running_gang_does_not_time_out(kube: FakeKubernetes) -> None:
    launch()
    kube.start_pods(NAME, NS)
    later(0.6, lambda: kube.complete(NAME, NS))
    event, took = await run_to_event(trigger(started_at=time.time(), start_timeout=0.1))
    assert event["status"] == "success" and took >= 0.5


async def test_a_restarting_gang_is_followed_to_its_success(
    kube: FakeKubernetes, caplog: pytest.LogCaptureFixture
) -> None:
    launch()
    kube.start_pods(NAME, NS)
    later(0.2, lambda: kube.evict(NAME, NS, 1))  # replaced, not counted
    later(0.5, lambda: kube.start_pods(NAME, NS))
    later(0.8, lambda: kube.complete(NAME, NS))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        event, _ = await run_to_event(trigger(start_timeout=0.1))  # restarting is not pending
    assert event["status"] == "success"
    phases = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert (
        sum(" is restarting: " in m for m in phases) == 1 and sum(" is running: " in m for m in phases) == 2
    )


async def test_a_gang_kueue_does_not_admit_in_time_is_an_admission_timeout(kube: FakeKubernetes) -> None:
    launch(queue="team-a")
    event, took = await run_to_event(trigger(start_timeout=0.1, admission_timeout=0.4))
    assert event["status"] == "admission_timeout" and 0.35 < took < 3
    assert event["message"] == (
        "The training gang was not admitted by Kueue within 0.4 s: waiting for Kueue admission in LocalQueue "
        "team-a: couldn't assign flavors to pod set main: insufficient unused quota for nvidia.com/gpu in "
        "flavor gpu-a100, 2 more needed."
    )
    assert (NS, NAME) in kube.jobs  # deleting it is the operator's (conclude)


async def test_job_deleted_outside_airflow_fails(kube: FakeKubernetes) -> None:
    launch()
    kube.start_pods(NAME, NS)
    later(0.2, lambda: kube.delete_job_behind_airflows_back(NAME, NS))
    event, _ = await run_to_event(trigger())
    assert event["status"] == "failed"
    assert event["message"].startswith(f"Job {NS}/{NAME} was deleted outside Airflow")


async def test_persistent_server_errors_end_in_an_error_event(kube: FakeKubernetes) -> None:
    launch()
    kube.requests.clear()
    kube.fail_requests(seconds=60)
    event, took = await run_to_event(trigger(error_timeout=0.6))
    assert event["status"] == "error" and 0.6 <= took < 2.5
    assert event["message"].startswith(f"The Kubernetes API failed on every poll of Job {NS}/{NAME} for ")
    assert "through connection 'k8s_training'" in event["message"]
    assert event["message"].endswith("last error: ServiceException: 500 etcdserver: request timed out")
    # backed off (0.1, 0.2, 0.4 ...), not polled every 0.05 s
    assert 3 <= len(kube.requests) <= 6


async def test_transient_server_errors_are_ridden_out(
    kube: FakeKubernetes, caplog: pytest.LogCaptureFixture
) -> None:
    launch()
    kube.start_pods(NAME, NS)
    kube.fail_requests(count=3)
    later(0.8, lambda: kube.complete(NAME, NS))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        event, _ = await run_to_event(trigger(error_timeout=5))
    assert event["status"] == "success"
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    warnings = [m for m in messages if "failed (" in m]
    assert len(warnings) == 3 and "500 etcdserver: request timed out" in warnings[0]
    assert any("works again after 3 error(s)" in m for m in messages)


async def test_forbidden_is_an_error_at_once(kube: FakeKubernetes) -> None:
    launch()
    kube.forbid("list", "pods")
    event, took = await run_to_event(trigger(error_timeout=60))
    assert event["status"] == "error" and took < 1.5
    assert event["message"].startswith(f"Kubernetes refused to list pods in namespace {NS!r} (403 Forbidden")


async def test_missing_connection_is_retried_then_an_error(kube: FakeKubernetes) -> None:
    event, _ = await run_to_event(trigger(kubernetes_conn_id="no_such_conn", error_timeout=0.3))
    assert event["status"] == "error"
    assert "no_such_conn" in event["message"] and kube.requests == []
