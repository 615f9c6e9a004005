"""TrainingGangHook through the real cncf KubernetesHook and kubernetes client, against a fake API server."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

import pytest
from support.fake_kubernetes import FakeKubernetes, fake_kubernetes_connection

from airflow_ml_provider.hooks.kubernetes import (
    RBAC_DOC,
    GangStatus,
    KubernetesPermissionError,
    TrainingGangHook,
)
from airflow_ml_provider.runners.kubernetes_objects import (
    LABEL_GANG,
    GangPodSettings,
    headless_service,
    indexed_job,
)

pytestmark = pytest.mark.integration

NAME = "train-4f2a9c01de"
NS = "ml"
SETTINGS = GangPodSettings(
    image="registry.example.com/ml/steps:0.1.0",
    namespace=NS,
    workers=3,
    env={"MLFLOW_TRACKING_URI": "http://mlflow.ml:5000"},
    env_from_secrets=["mlflow-credentials"],
    resources={"limits": {"nvidia.com/gpu": 1}},
    active_deadline_seconds=3600,
)


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubernetes]:
    with fake_kubernetes_connection(monkeypatch) as fake:
        yield fake


def manifests(workers: int = 3) -> tuple[dict, dict]:
    settings = GangPodSettings(**{**SETTINGS.__dict__, "workers": workers})
    return indexed_job(NAME, "train_model", {"epochs": 2}, settings), headless_service(NAME, settings)


def launched(kube: FakeKubernetes, workers: int = 3) -> TrainingGangHook:
    hook = TrainingGangHook()
    assert hook.launch(*manifests(workers)) is False
    return hook


# -- launch ------------------------------------------------------------------------------------


def test_launch_posts_the_manifests_service_first(kube: FakeKubernetes) -> None:
    job, service = manifests()
    assert TrainingGangHook().launch(job, service) is False

    posts = kube.recorded("POST")
    assert [p.path for p in posts] == [
        f"/api/v1/namespaces/{NS}/services",
        f"/apis/batch/v1/namespaces/{NS}/jobs",
    ]
    posted_service, posted_job = posts[0].body, posts[1].body
    assert posted_job == job and posted_service == service
    spec = posted_job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    # a gang retries per worker (see tests/integration/hooks/test_gang_restarts_kueue.py)
    retries = (spec["podReplacementPolicy"], spec["backoffLimitPerIndex"], spec["maxFailedIndexes"])
    assert retries == ("Failed", 3, 0)
    assert "backoffLimit" not in spec
    assert spec["ttlSecondsAfterFinished"] == 86400 and spec["activeDeadlineSeconds"] == 3600
    assert posted_service["spec"]["clusterIP"] == "None"
    assert posted_service["spec"]["selector"] == {LABEL_GANG: NAME}
    (container,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["AIRFLOW_ML_JOB_NAME"] == NAME and env["AIRFLOW_ML_WORKERS"] == "3"
    assert container["envFrom"] == [{"secretRef": {"name": "mlflow-credentials"}}]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 1}}
    # the fake's Job controller made the Indexed Job's pods
    names = kube.pod_names(NAME, NS)
    assert [n.rsplit("-", 1)[0] for n in names] == [f"{NAME}-{i}" for i in range(3)]


def test_launch_twice_reattaches_with_one_job_post(kube: FakeKubernetes) -> None:
    hook = launched(kube)
    assert TrainingGangHook().launch(*manifests()) is True
    assert hook.launch(*manifests()) is True
    assert len(kube.recorded("POST", "jobs")) == 1
    assert len(kube.recorded("POST", "services")) == 1
    assert len(kube.pod_names(NAME, NS)) == 3


def test_a_create_that_loses_the_race_reattaches(kube: FakeKubernetes) -> None:
    job, service = manifests()
    kube.put_job(job)  # created between this launch's read and its create
    original_get = kube.handle
    calls = {"n": 0}

    def hide_the_job_once(method: str, raw_path: str, body: object) -> tuple[int, object]:
        if method == "GET" and raw_path.startswith(f"/apis/batch/v1/namespaces/{NS}/jobs/{NAME}"):
            calls["n"] += 1
            if calls["n"] == 1:
                return 404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}
        return original_get(method, raw_path, body)

    kube.handle = hide_the_job_once  # type: ignore[method-assign]
    assert TrainingGangHook().launch(job, service) is True
    assert len(kube.recorded("POST", "jobs")) == 1  # sent, and answered 409


def test_someone_elses_job_is_a_clear_error(kube: FakeKubernetes) -> None:
    job, service = manifests()
    foreign = {**job, "metadata": {"name": NAME, "namespace": NS, "labels": {"team": "search"}}}
    kube.put_job(foreign)
    with pytest.raises(ValueError) as err:
        TrainingGangHook().launch(job, service)
    message = str(err.value)
    assert f"A Job named {NAME!r} already exists in namespace {NS!r}" in message
    assert f"kubectl -n {NS} delete job {NAME}" in message and "another namespace" in message
    assert kube.recorded("POST", "jobs") == []


def test_someone_elses_service_is_a_clear_error(kube: FakeKubernetes) -> None:
    job, service = manifests()
    kube.services[(NS, NAME)] = {"metadata": {"name": NAME, "namespace": NS, "labels": {"app": "web"}}}
    with pytest.raises(ValueError, match=f"A Service named {NAME!r} already exists in namespace 'ml'"):
        TrainingGangHook().launch(job, service)
    assert kube.recorded("POST") == []


def test_reattach_to_a_gang_of_another_size_is_refused(kube: FakeKubernetes) -> None:
    launched(kube, workers=3)
    with pytest.raises(ValueError, match="exists already with 3 workers, but this task asks for 4"):
        TrainingGangHook().launch(*manifests(workers=4))


def test_service_must_match_the_job(kube: FakeKubernetes) -> None:
    job, service = manifests()
    service["metadata"]["name"] = "other"
    with pytest.raises(ValueError, match="the Service must have the Job's name and namespace"):
        TrainingGangHook().launch(job, service)


# -- status ------------------------------------------------------------------------------------


def test_just_launched_gang_is_pending(kube: FakeKubernetes) -> None:
    status = launched(kube).status(NAME, NS, 3)
    assert (status.phase, status.pods_running, status.workers) == ("pending", 0, 3)
    assert f"Job {NS}/{NAME}: 0 of 3 pods running; 3 not started:" in status.message
    assert "Pending: no reason reported yet" in status.message


def test_unschedulable_pod_is_named_with_the_schedulers_reason(kube: FakeKubernetes) -> None:
    hook = launched(kube)
    kube.start_pods(NAME, NS, [0, 1])
    kube.set_pending(NAME, NS, "Unschedulable", indices=[2])
    status = hook.status(NAME, NS, 3)
    stuck = kube.pod_names(NAME, NS)[2]
    assert (status.phase, status.pods_running) == ("pending", 2)
    assert status.message == (
        f"Job {NS}/{NAME}: 2 of 3 pods running; 1 not started: {stuck}: Unschedulable: 0/3 nodes are "
        "available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: 3 No preemption "
        "victims found for incoming pod."
    )


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (
            "ImagePullBackOff",
            'ImagePullBackOff: Back-off pulling image "registry.example.com/ml/steps:0.1.0"',
        ),
        ("ErrImagePull", "ErrImagePull: failed to pull and unpack image"),
        ("CreateContainerConfigError", 'CreateContainerConfigError: secret "mlflow-credentials" not found'),
    ],
)
def test_container_waiting_reasons_are_grouped(kube: FakeKubernetes, reason: str, expected: str) -> None:
    hook = launched(kube, workers=5)
    kube.set_pending(NAME, NS, reason)
    status = hook.status(NAME, NS, 5)
    names = kube.pod_names(NAME, NS)
    assert status.phase == "pending" and status.pods_running == 0
    assert (
        f"0 of 5 pods running; 5 not started: {', '.join(names[:3])} and 2 more: {expected}" in status.message
    )


def test_pods_not_created_yet_point_to_the_jobs_events(kube: FakeKubernetes) -> None:
    job, _ = manifests()
    kube.put_job(job)  # the Job controller has made no pods (quota, admission webhook ...)
    status = TrainingGangHook().status(NAME, NS, 3)
    assert status.phase == "pending"
    assert (
        f"3 pod(s) not created yet (see the Job's events: kubectl -n {NS} describe job {NAME})"
        in status.message
    )


def test_all_pods_started_is_running(kube: FakeKubernetes) -> None:
    hook = launched(kube)
    kube.start_pods(NAME, NS)
    status = hook.status(NAME, NS, 3)
    assert status == GangStatus(
        "running", f"Job {NS}/{NAME}: all 3 pods running.", 3, 3, start_time=status.start_time
    )
    assert status.start_time == pytest.approx(time.time(), abs=5)  # the Job's status.startTime


def test_a_failed_pod_of_a_job_without_retries_fails_it_with_index_exit_code_and_reason(
    kube: FakeKubernetes,
) -> None:
    settings = GangPodSettings(**{**SETTINGS.__dict__, "gang": False})  # backoffLimit 0
    hook = TrainingGangHook()
    hook.launch(indexed_job(NAME, "train_model", {}, settings))
    kube.start_pods(NAME, NS)
    failed = kube.fail_pod(NAME, NS, 1, exit_code=137, reason="OOMKilled")
    status = hook.status(NAME, NS, 3)
    assert status.phase == "failed" and status.failed_pods == (failed,)
    assert status.message == (
        f"Job {NS}/{NAME} failed: worker 1 (pod {failed}) exited with code 137 (OOMKilled); the Job failed: "
        "BackoffLimitExceeded: Job has reached the specified backoff limit."
    )
    assert status.pods_running == 0 and kube.pod_names(NAME, NS) == [failed]  # the others were stopped


def test_an_application_error_fails_the_gang_at_once_naming_the_failure_policy(kube: FakeKubernetes) -> None:
    hook = launched(kube)
    kube.start_pods(NAME, NS)
    failed = kube.fail_pod(NAME, NS, 2, exit_code=1, reason="Error")
    status = hook.status(NAME, NS, 3)
    assert status.phase == "failed"
    assert status.message == (
        f"Job {NS}/{NAME} failed: worker 2 (pod {failed}) exited with code 1 (Error): an application error: "
        "the Job's pod failure policy fails it without a retry; the Job failed: PodFailurePolicy: Container "
        f"worker for pod {NS}/{failed} failed with exit code 1 matching FailJob rule at index 1."
    )


def test_completed_job_succeeded(kube: FakeKubernetes) -> None:
    hook = launched(kube)
    kube.start_pods(NAME, NS)
    kube.complete(NAME, NS)
    status = hook.status(NAME, NS, 3)
    assert (status.phase, status.pods_running, status.failed_pods) == ("succeeded", 3, ())
    assert status.message == f"Job {NS}/{NAME} completed: 3 of 3 workers succeeded."


def test_no_job_is_missing(kube: FakeKubernetes) -> None:
    status = TrainingGangHook().status(NAME, NS, 3)
    assert status == GangStatus("missing", f"Job {NS}/{NAME} does not exist.", 0, 3)
    assert kube.recorded("GET", "pods") == []


def test_server_errors_reach_the_caller_untried(kube: FakeKubernetes) -> None:
    # No retries in the hook (the cncf helpers would retry 5xx for ~15 s): the trigger backs off.
    from kubernetes.client.exceptions import ApiException

    hook = launched(kube)
    kube.requests.clear()
    kube.fail_requests(count=1)
    with pytest.raises(ApiException) as err:
        hook.status(NAME, NS, 3)
    assert err.value.status == 500
    assert len(kube.requests) == 1
    assert hook.status(NAME, NS, 3).phase == "pending"


# -- logs --------------------------------------------------------------------------------------


def test_log_tail_failed_pods_first_last_lines_verbatim(kube: FakeKubernetes) -> None:
    hook = launched(kube)
    kube.start_pods(NAME, NS, [0, 2])
    kube.set_log(NAME, NS, 0, ["epoch 1", "epoch 2", '{"loss": 0.25}'])
    failed = kube.fail_pod(
        NAME,
        NS,
        2,
        exit_code=1,
        log=["epoch 1", "Traceback (most recent call last):", "ValueError: nan loss"],
        job_failed=False,  # before the Job controller stops the others
    )
    names = kube.pod_names(NAME, NS)

    tail = hook.log_tail(NAME, NS, lines=2)

    assert list(tail) == [failed, names[0], names[1]]
    assert tail[failed] == ["Traceback (most recent call last):", "ValueError: nan loss"]
    assert tail[names[0]] == ["epoch 2", '{"loss": 0.25}']  # a JSON-looking line stays as it was logged
    (explanation,) = tail[names[1]]
    assert explanation.startswith(f"(log of pod {names[1]} not available: 400 ")
    assert "is waiting to start" in explanation
    assert {r.query["tailLines"][0] for r in kube.recorded("GET", "pods") if "tailLines" in r.query} == {"2"}
    assert {r.query["container"][0] for r in kube.recorded("GET", "pods") if "container" in r.query} == {
        "worker"
    }


def test_log_tail_without_the_job_reads_every_pod_of_the_gang(kube: FakeKubernetes) -> None:
    hook = launched(kube, workers=2)
    kube.start_pods(NAME, NS)
    kube.set_log(NAME, NS, 1, ["last words"])
    del kube.jobs[(NS, NAME)]  # deleted with the default policy (orphan): its pods stay
    tail = hook.log_tail(NAME, NS)
    assert list(tail) == kube.pod_names(NAME, NS) and tail[kube.pod_names(NAME, NS)[1]] == ["last words"]


def test_log_tail_forbidden_log_is_explained(kube: FakeKubernetes) -> None:
    hook = launched(kube, workers=1)
    kube.start_pods(NAME, NS)
    kube.forbid("get", "pods/log")
    ((pod, lines),) = hook.log_tail(NAME, NS).items()
    assert len(lines) == 1 and lines[0].startswith(f"(log of pod {pod} not available: 403 ")
    assert "cannot get resource" in lines[0]


# -- delete ------------------------------------------------------------------------------------


def test_delete_removes_job_service_and_pods_and_tolerates_404(kube: FakeKubernetes) -> None:
    hook = launched(kube)
    kube.start_pods(NAME, NS)
    hook.delete(NAME, NS)
    assert kube.jobs == {} and kube.services == {} and kube.pods == {}
    (job_delete,) = kube.recorded("DELETE", "jobs")
    assert job_delete.query.get("propagationPolicy") == ["Background"] or (
        (job_delete.body or {}).get("propagationPolicy") == "Background"
    )
    hook.delete(NAME, NS)  # gone already: no error
    assert len(kube.recorded("DELETE")) == 4
    assert hook.status(NAME, NS, 3).phase == "missing"


def test_delete_without_wait_returns_while_pods_terminate(kube: FakeKubernetes) -> None:
    hook = launched(kube)
    kube.pod_grace_seconds = 0.5
    hook.delete(NAME, NS)
    assert kube.jobs == {} and kube.services == {}
    assert len(kube.pods) == 3 and all("deletionTimestamp" in p["metadata"] for p in kube.pods.values())


def test_delete_and_wait_returns_once_the_pods_are_gone(kube: FakeKubernetes) -> None:
    hook = launched(kube)
    kube.pod_grace_seconds = 0.4
    start = time.monotonic()
    hook.delete(NAME, NS, wait=True, poll_interval=0.05)
    assert 0.35 < time.monotonic() - start < 3
    assert kube.pods == {} and kube.jobs == {}


def test_delete_and_wait_times_out_naming_what_is_left(kube: FakeKubernetes) -> None:
    hook = launched(kube)
    kube.pod_grace_seconds = 30
    with pytest.raises(TimeoutError, match=r"after 0.2 s 3 pod\(s\) are still there"):
        hook.delete(NAME, NS, wait=True, timeout=0.2, poll_interval=0.05)


def test_a_relaunched_gang_ignores_the_terminating_pods_of_the_old_job(kube: FakeKubernetes) -> None:
    hook = launched(kube)
    kube.start_pods(NAME, NS)
    kube.fail_pod(NAME, NS, 0, exit_code=1, job_failed=False)
    kube.pod_grace_seconds = 30  # the old pods linger
    hook.delete(NAME, NS)
    assert hook.launch(*manifests()) is False
    assert len(kube.pods) == 6  # 3 terminating, 3 new
    status = hook.status(NAME, NS, 3)
    assert (status.phase, status.pods_running, status.failed_pods) == ("pending", 0, ())
    assert len(hook.log_tail(NAME, NS)) == 3


def test_delete_service_keeps_the_job_for_its_logs(kube: FakeKubernetes) -> None:
    hook = launched(kube)
    kube.start_pods(NAME, NS)
    kube.complete(NAME, NS)
    assert hook.delete_service(NAME, NS) is True
    assert kube.services == {} and (NS, NAME) in kube.jobs and len(kube.pods) == 3
    assert hook.delete_service(NAME, NS) is False
    assert hook.status(NAME, NS, 3).phase == "succeeded"


# -- permissions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "resource", "action", "named"),
    [
        ("create", "jobs", "launch", "create jobs.batch"),
        ("get", "jobs", "launch", "get jobs.batch"),
        ("create", "services", "launch", "create services"),
        ("list", "pods", "status", "list pods"),
        ("delete", "jobs", "delete", "delete jobs.batch"),
    ],
)
def test_forbidden_names_verb_resource_and_the_role(
    kube: FakeKubernetes, verb: str, resource: str, action: str, named: str
) -> None:
    hook = TrainingGangHook()
    if action != "launch":
        hook.launch(*manifests())
    kube.forbid(verb, resource)
    with pytest.raises(KubernetesPermissionError) as err:
        if action == "launch":
            hook.launch(*manifests())
        elif action == "status":
            hook.status(NAME, NS, 3)
        else:
            hook.delete(NAME, NS)
    message = str(err.value)
    assert message.startswith(f"Kubernetes refused to {named} in namespace {NS!r} (403 Forbidden: ")
    assert f'cannot {verb} resource "{resource}"' in message  # the API server's own words
    assert (
        "jobs.batch: create, get, delete; services: create, get, delete; pods: list; pods/log: get" in message
    )
    assert RBAC_DOC in message
    assert (err.value.verb, err.value.namespace) == (verb, NS)


# -- connection --------------------------------------------------------------------------------


def test_named_connection_and_no_process_wide_client_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.client import Configuration

    before = Configuration.get_default_copy().host
    with fake_kubernetes_connection(monkeypatch, conn_id="gpu_cluster") as kube:
        hook = TrainingGangHook(kubernetes_conn_id="gpu_cluster")
        assert hook.status(NAME, NS, 2).phase == "missing"
        assert hook.kube_hook.api_client.configuration.host == kube.url
    assert kube.recorded("GET", "jobs")
    # the cncf hook, given no configuration, would have made the fake every client's default
    assert Configuration.get_default_copy().host == before


def test_connection_json_is_what_the_cncf_hook_reads(kube: FakeKubernetes) -> None:
    extra = json.loads(kube.connection_json())["extra"]
    assert TrainingGangHook().kube_hook._get_field("kube_config") == extra["kube_config"]


def test_missing_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "airflow.providers.cncf.kubernetes.hooks.kubernetes", None)
    with pytest.raises(ImportError, match=r"pip install 'airflow-ml-provider\[kubernetes\]'"):
        TrainingGangHook().kube_hook  # noqa: B018
