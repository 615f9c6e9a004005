"""
DistributedTrainingOperator with the Kubernetes launcher: the whole lifecycle against a fake API server.

The operator talks through the real cncf KubernetesHook and kubernetes client to
``tests/support/fake_kubernetes.py``; MLflow is a real server. A simulator thread plays the pods: it waits
for the Job, logs the chief's result to the task's MLflow run (from the spec the pods would get)
and moves the pods through their phases.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from support.fake_kubernetes import FakeKubernetes, fake_kubernetes_connection
from support.harness import load_dag, task_states

from airflow_ml_provider.runners.kubernetes_objects import SPEC_ANNOTATION, gang_name

pytestmark = pytest.mark.integration

NS = "ml"
DAG_ID = "training_on_kubernetes"
# How long the pod simulators wait for the operator's Job: the DAG run may be slow to get there
# while other test processes load the machine.
SIMULATOR_PATIENCE = 300


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubernetes]:
    with fake_kubernetes_connection(monkeypatch) as fake:
        yield fake


def _run_id(run_after: datetime) -> str:
    from airflow.models.dagrun import DagRun
    from airflow.utils.types import DagRunType

    return DagRun.generate_run_id(run_type=DagRunType.MANUAL, logical_date=run_after, run_after=run_after)


def _simulate(kube: FakeKubernetes, name: str, act: Callable[[dict[str, Any]], None]) -> threading.Thread:
    """Wait for the gang's Job, then ``act(spec)`` as its pods would."""

    def body() -> None:
        deadline = time.monotonic() + SIMULATOR_PATIENCE
        while time.monotonic() < deadline:
            job = kube.jobs.get((NS, name))
            if job is not None:
                act(json.loads(job["spec"]["template"]["metadata"]["annotations"][SPEC_ANNOTATION]))
                return
            time.sleep(0.05)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def _log_chief_result(mlflow_client: Any, spec: dict[str, Any]) -> None:
    result = {
        "role": "chief",
        "workers": 2,
        "strategy": "multi_worker_mirrored",
        "model_uri": "models:/m-fake",
        "final_metrics": {"accuracy": 0.8},
        "epochs": 10,
    }
    mlflow_client.log_text(spec["mlflow"]["run_id"], json.dumps(result), "training/result.json")


def _succeed_new_gang(
    kube: FakeKubernetes, mlflow_client: Any, name: str, is_new: Callable[[dict[str, Any]], bool]
) -> None:
    """In the background: once the gang's Job is a new one, play its pods to success."""

    def body() -> None:
        deadline = time.monotonic() + SIMULATOR_PATIENCE
        while time.monotonic() < deadline:
            job = kube.jobs.get((NS, name))
            if job is not None and is_new(job):
                spec = json.loads(job["spec"]["template"]["metadata"]["annotations"][SPEC_ANNOTATION])
                _log_chief_result(mlflow_client, spec)
                kube.start_pods(name, NS)
                kube.complete(name, NS)
                return
            time.sleep(0.05)

    threading.Thread(target=body, daemon=True).start()


def _dag_test(run_after: datetime, expect: str, dag_id: str = DAG_ID) -> Any:
    dag_run = load_dag(dag_id).test(run_after=run_after, logical_date=run_after)
    assert str(dag_run.state) == expect, task_states(dag_run)
    return dag_run


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def test_success_creates_one_gang_returns_the_model_and_removes_the_service(
    airflow_db, mlflow_conn, mlflow_client, kube
):
    run_after = _now()
    name = gang_name(DAG_ID, _run_id(run_after), "train", -1)

    def pods(spec: dict[str, Any]) -> None:
        _log_chief_result(mlflow_client, spec)
        kube.start_pods(name, NS)
        kube.set_log(name, NS, 0, ["epoch 10/10 accuracy 0.80", "model logged"])
        time.sleep(0.3)
        kube.complete(name, NS)

    _simulate(kube, name, pods)
    dag_run = _dag_test(run_after, "success")
    ti = next(iter(dag_run.get_task_instances()))
    assert ti.xcom_pull(task_ids="train")["model_uri"] == "models:/m-fake"
    assert len(kube.recorded("POST", "jobs")) == 1
    job = kube.recorded("POST", "jobs")[0].body
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    spec = json.loads(job["spec"]["template"]["metadata"]["annotations"][SPEC_ANNOTATION])
    assert spec["strategy"] == "multi_worker_mirrored" and spec["run_fn"] == "churn_training.model:run_fn"
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"] == mlflow_conn.url
    assert container["envFrom"] == [{"secretRef": {"name": "mlflow-credentials"}}]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert (NS, name) not in kube.services  # removed once done
    assert (NS, name) in kube.jobs  # kept until its TTL, with the pods' logs


def test_a_failed_worker_fails_the_task_with_its_log_tail_and_removes_the_gang(
    airflow_db, mlflow_conn, mlflow_client, kube, capfd
):
    run_after = _now()
    name = gang_name(DAG_ID, _run_id(run_after), "train", -1)

    def pods(spec: dict[str, Any]) -> None:
        kube.start_pods(name, NS)
        kube.fail_pod(
            name, NS, 1, exit_code=137, reason="OOMKilled", log=["loading data", "Killed"], job_failed=True
        )

    _simulate(kube, name, pods)
    dag_run = _dag_test(run_after, "failed")
    text = "".join(capfd.readouterr())
    assert f"Training gang {name} in namespace {NS}" in text
    assert "OOMKilled" in text and "137" in text
    assert "Killed" in text  # the failing pod's last lines
    assert (NS, name) not in kube.jobs and (NS, name) not in kube.services
    runs = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name(DAG_ID).experiment_id],
        f"tags.`airflow.run_id` = '{dag_run.run_id}' and tags.`airflow.task_id` = 'train'",
    )
    assert [r.info.status for r in runs] == ["FAILED"]


def test_a_gang_that_does_not_start_in_time_is_removed(airflow_db, mlflow_conn, kube, capfd):
    run_after = _now()
    dag_id = "training_on_kubernetes_short_start"
    name = gang_name(dag_id, _run_id(run_after), "train", -1)
    reason = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    _simulate(kube, name, lambda spec: kube.set_pending(name, NS, "Unschedulable", reason))
    _dag_test(run_after, "failed", dag_id)
    text = "".join(capfd.readouterr())
    assert "did not fully start within 1 s" in text
    assert "Insufficient nvidia.com/gpu" in text
    assert (NS, name) not in kube.jobs and (NS, name) not in kube.services


def _earlier_try(run_after: datetime, mlflow_client: Any, *, changed: bool = False) -> str:
    """Start the gang as the task's earlier try did (same MLflow run, same spec), then "lose" that worker."""
    from airflow_ml_provider.hooks.kubernetes import TrainingGangHook
    from airflow_ml_provider.hooks.mlflow import MlflowHook
    from airflow_ml_provider.runners.kubernetes_objects import headless_service, indexed_job
    from airflow_ml_provider.tracking import TaskIdentity, start_task_run

    run_id = _run_id(run_after)
    name = gang_name(DAG_ID, run_id, "train", -1)
    task = load_dag(DAG_ID).get_task("train")
    hook = MlflowHook()
    run = start_task_run(hook, TaskIdentity(dag_id=DAG_ID, run_id=run_id, task_id="train", map_index=-1))
    spec = task.build_spec({}, run)
    if changed:
        spec["hyperparameters"] = {**spec["hyperparameters"], "epochs": 99}
    settings = task.pod_settings(hook.settings)
    TrainingGangHook().launch(
        indexed_job(name, "train_model", spec, settings), headless_service(name, settings)
    )
    return name


def test_a_retry_reattaches_to_the_running_gang_instead_of_starting_another(
    airflow_db, mlflow_conn, mlflow_client, kube
):
    run_after = _now()
    name = _earlier_try(run_after, mlflow_client)
    kube.start_pods(name, NS)
    job = kube.jobs[(NS, name)]
    spec = json.loads(job["spec"]["template"]["metadata"]["annotations"][SPEC_ANNOTATION])

    reads_before = len(kube.recorded("GET", "pods"))

    def complete_later() -> None:
        # Complete only once the task has read the gang's pods twice (the stale-gang check, then its
        # wait): the task must find this gang running, however slow the DAG run is to get there.
        deadline = time.monotonic() + SIMULATOR_PATIENCE
        while len(kube.recorded("GET", "pods")) < reads_before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        _log_chief_result(mlflow_client, spec)
        kube.complete(name, NS)

    threading.Thread(target=complete_later, daemon=True).start()
    _dag_test(run_after, "success")
    assert len(kube.recorded("POST", "jobs")) == 1  # the earlier try's only
    assert kube.jobs[(NS, name)]["metadata"]["uid"] == job["metadata"]["uid"]


def test_a_gang_started_with_other_arguments_is_replaced(airflow_db, mlflow_conn, mlflow_client, kube):
    run_after = _now()
    name = _earlier_try(run_after, mlflow_client, changed=True)
    kube.start_pods(name, NS)
    old_uid = kube.jobs[(NS, name)]["metadata"]["uid"]

    _succeed_new_gang(kube, mlflow_client, name, lambda job: job["metadata"]["uid"] != old_uid)
    _dag_test(run_after, "success")
    assert len(kube.recorded("POST", "jobs")) == 2
    spec = json.loads(kube.jobs[(NS, name)]["spec"]["template"]["metadata"]["annotations"][SPEC_ANNOTATION])
    assert spec["hyperparameters"]["epochs"] == 10


def test_a_retry_replaces_the_failed_gang_of_an_earlier_try(airflow_db, mlflow_conn, mlflow_client, kube):
    from airflow_ml_provider.hooks.kubernetes import TrainingGangHook
    from airflow_ml_provider.runners.kubernetes_objects import GangPodSettings, headless_service, indexed_job

    run_after = _now()
    name = gang_name(DAG_ID, _run_id(run_after), "train", -1)
    settings = GangPodSettings(image="registry.example.com/ml/churn-trainer:1.4.0", namespace=NS, workers=2)
    TrainingGangHook().launch(
        indexed_job(name, "train_model", {"earlier": True}, settings), headless_service(name, settings)
    )
    kube.start_pods(name, NS)
    kube.fail_pod(name, NS, 0, job_failed=True)
    posts_before = len(kube.recorded("POST", "jobs"))

    _succeed_new_gang(
        kube, mlflow_client, name, lambda job: len(kube.recorded("POST", "jobs")) > posts_before
    )
    _dag_test(run_after, "success")
    assert len(kube.recorded("POST", "jobs")) == posts_before + 1


def test_on_kill_deletes_the_job_and_the_service(kube):
    from airflow_ml_provider.hooks.kubernetes import TrainingGangHook
    from airflow_ml_provider.operators.training import DistributedTrainingOperator
    from airflow_ml_provider.runners.kubernetes_objects import GangPodSettings, headless_service, indexed_job

    settings = GangPodSettings(image="img:1", namespace=NS, workers=2)
    TrainingGangHook().launch(
        indexed_job("train-killed", "train_model", {}, settings), headless_service("train-killed", settings)
    )
    operator = DistributedTrainingOperator(
        task_id="train", run_fn="m:f", train_uri="/d", placement="pod", image="img:1"
    )
    operator._pod_job = ("train-killed", NS)
    operator.on_kill()
    assert (NS, "train-killed") not in kube.jobs and (NS, "train-killed") not in kube.services
