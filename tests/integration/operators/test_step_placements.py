"""
Every step operator in every placement: the worker's process, another interpreter, a pod.

``tests/dags/placement_dags.py`` has one DAG per placement (named once, in ``default_args``) with
the same five tasks: schema inference, data validation, ``describe_dataset`` through
MLStepOperator, model evaluation and infra validation, on a few hundred rows and a real
scikit-learn model. Each DAG runs with ``dag.test()`` against a real mlflow server. For the pod
placement the operators talk to a fake Kubernetes API server (the real cncf hook and client) and a
:class:`PodPlayer` runs each Job's pod as a real process from the container's command and env,
after checking the manifests against the Kubernetes OpenAPI schema. Every placement must give the
same result: the same XCom (keys and values that do not depend on where the step ran), the same
artifacts in the task's MLflow run, and a clean task log.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.harness import load_dag, log_problems, run_dag, task_mlflow_run, task_states, task_xcom
from support.model_fixtures import churn_version, log_churn_model

from airflow_ml_provider.ml.__main__ import STEP_RESULT_ARTIFACT
from airflow_ml_provider.runners.kubernetes_objects import SPEC_ANNOTATION, gang_name

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The tasks of every placement DAG, in the order dag.test() runs them (a chain).
TASKS = ("infer_schema", "validate", "describe", "evaluate", "infra_validate")
POD_NAMESPACE = "ml-steps"  # the pod DAG's default_args say so
POD_IMAGE = "ml-steps:test"

ROWS = 300
COLUMNS = 9  # the demo generator's: 8 features and the label
# The XCom of each task, as the operators' handle_result build it (the worker placement's shape).
VALIDATION_KEYS = {
    "data_uri",
    "example_count",
    "anomaly_count",
    "anomalies",
    "drift",
    "skew",
    "schema_uri",
    "schema_created",
    "data_role",
    "statistics_uri",
    "report",
    "mlflow_run_id",
    "baseline",
}
BLESSING_KEYS = {
    "blessed",
    "candidate_model_uri",
    "registered_model_name",
    "baseline",
    "failed_thresholds",
    "failures",
    "metrics",
    "baseline_metrics",
    "example_count",
    "engine",
    "dataset_version",
    "data_uri",
    "evaluated_on",
    "metrics_dataset",
    "evaluations",
    "training_run_id",
    "mlflow_run_id",
    "report",
}
INFRA_KEYS = {"blessed", "model_uri", "failures", "checks", "latency_ms", "mlflow_run_id", "report"}
INFRA_CHECKS = {"load", "predict", "output_shape", "finite"}
# What each task leaves in its MLflow run, whatever the placement (pods add STEP_RESULT_ARTIFACT).
ARTIFACTS = {
    "infer_schema": {"step/spec.json", "validation/schema.pbtxt"},
    "validate": {
        "step/spec.json",
        "validation/statistics.pb",
        "validation/anomalies.json",
        "validation/anomalies.pbtxt",
        "validation/schema.pbtxt",
        "validation/report.html",
    },
    "describe": {"step/spec.json"},
    "evaluate": {
        "step/spec.json",
        "evaluation/metrics.json",
        "evaluation/blessing.json",
        "evaluation/record.json",
        "evaluation/report.html",
    },
    "infra_validate": {"step/spec.json", "infra_validation/infra_validation.json"},
}
ARTIFACT_FOLDERS = {
    "infer_schema": "validation",
    "validate": "validation",
    "evaluate": "evaluation",
    "infra_validate": "infra_validation",
}
# The artifact folder each pod uploads itself (--outputs-artifact-path); None: the step has no outputs.
POD_OUTPUTS = {task: ARTIFACT_FOLDERS.get(task) for task in TASKS}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, mlflow_server: Any) -> dict[str, str]:
    """A training and an evaluation version (with their _SUCCESS markers) and a model trained on the first."""
    root = tmp_path_factory.mktemp("placement-data")
    train_uri = churn_version(root / "train", rows=ROWS, seed=21)
    eval_uri = churn_version(root / "eval", rows=ROWS, seed=22)
    model_uri = log_churn_model(mlflow_server.url, "placement_models", train_uri, "good")
    return {"data_uri": train_uri, "eval_uri": eval_uri, "model_uri": model_uri}


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from support.fake_kubernetes import fake_kubernetes_connection

    with fake_kubernetes_connection(monkeypatch) as fake:
        yield fake


def _paths(client: Any, run_id: str, path: str = "") -> set[str]:
    """Every artifact file of the run, recursively."""
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def _run(placement: str, conf: dict[str, str]) -> Any:
    dag = load_dag(f"placement_{placement}")
    assert set(dag.task_ids) == set(TASKS)
    assert dag.default_args["placement"] == placement  # named once, for every task
    assert {dag.get_task(task).placement for task in TASKS} == {placement}
    return run_dag(dag, conf=conf)


def _play_every_job(player: Any, count: int) -> threading.Thread:
    """In the background: play ``count`` Jobs, each as it appears (dag.test() runs one task at a time)."""

    def body() -> None:
        for _ in range(count):
            player.play_next().join()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def _check_xcoms(dag_run: Any, conf: dict[str, str]) -> None:
    schema = task_xcom(dag_run, "infer_schema")
    assert schema["schema_uri"] == conf["schema_uri"] and Path(conf["schema_uri"]).is_file()

    summary = task_xcom(dag_run, "validate")
    assert set(summary) == VALIDATION_KEYS
    assert (summary["example_count"], summary["anomaly_count"], summary["anomalies"]) == (ROWS, 0, [])
    assert summary["schema_created"] is False  # the inferred schema was there
    assert summary["statistics_uri"] == f"runs:/{summary['mlflow_run_id']}/validation/statistics.pb"

    described = task_xcom(dag_run, "describe")
    assert described["uri"] == conf["data_uri"] and len(described["columns"]) == COLUMNS
    assert described["mlflow"]["metrics"]["rows"] == ROWS

    record = task_xcom(dag_run, "evaluate")
    assert set(record) == BLESSING_KEYS
    assert record["blessed"] is True and record["failures"] == [] and record["baseline"] is None
    assert record["candidate_model_uri"] == conf["model_uri"] and record["engine"] == "fast"
    assert record["example_count"] == ROWS and record["metrics"]["auc"] > 0.55
    assert (
        record["evaluated_on"] == ["data"] and record["evaluations"]["data"]["data_uri"] == conf["eval_uri"]
    )

    blessing = task_xcom(dag_run, "infra_validate")
    assert set(blessing) == INFRA_KEYS
    assert blessing["blessed"] is True and blessing["failures"] == []
    assert blessing["model_uri"] == conf["model_uri"]
    checks = {check["name"]: check["ok"] for check in blessing["checks"]}
    assert dict.fromkeys(INFRA_CHECKS, True).items() <= checks.items(), blessing["checks"]


def _check_runs(client: Any, dag_id: str, dag_run: Any, placement: str) -> dict[str, str]:
    """Each task's MLflow run: FINISHED, tagged with its placement, its artifacts there; returns the run ids."""
    run_ids = {}
    for task in TASKS:
        run = task_mlflow_run(client, dag_id, dag_run, task)
        assert run.info.status == "FINISHED", (task, run.info.status)
        assert run.data.tags["airflow_ml.placement"] == placement
        expected = ARTIFACTS[task] | ({STEP_RESULT_ARTIFACT} if placement == "pod" else set())
        found = _paths(client, run.info.run_id)
        assert expected <= found, (task, sorted(expected - found))
        if task == "evaluate":  # and the report's plots
            assert any(p.startswith("evaluation/plots/") for p in found), sorted(found)
        run_ids[task] = run.info.run_id
    assert task_mlflow_run(client, dag_id, dag_run, "describe").data.metrics["rows"] == ROWS
    return run_ids


def _check_pods(kube: Any, player: Any, dag_run: Any, run_ids: dict[str, str], tracking_uri: str) -> None:
    jobs = {r.body["metadata"]["name"]: r.body for r in kube.recorded("POST", "jobs")}
    names = {task: gang_name("placement_pod", dag_run.run_id, task, -1) for task in TASKS}
    assert player.played == [names[task] for task in TASKS]
    assert set(jobs) == set(names.values())
    assert kube.recorded("POST", "services") == [] and kube.services == {}
    for task, name in names.items():
        job = jobs[name]
        assert job["metadata"]["namespace"] == POD_NAMESPACE
        assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (1, 1)
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == POD_IMAGE
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["MLFLOW_TRACKING_URI"] == tracking_uri
        outputs = POD_OUTPUTS[task]
        args = ["--mlflow-run", run_ids[task], *(["--outputs-artifact-path", outputs] if outputs else [])]
        assert container["command"][-len(args) :] == args, (task, container["command"])
        spec = json.loads(job["spec"]["template"]["metadata"]["annotations"][SPEC_ANNOTATION])
        if outputs:
            assert spec["output_dir"] == "/tmp/airflow-ml-step/out"
        log = player.pod_log(name)
        assert f"result recorded in MLflow run {run_ids[task]}" in log, log[-3000:]
        problems = log_problems(log)
        assert not problems, (task, problems)


# The worker placement runs the TensorFlow steps in the task's own process: only an Airflow
# environment with the stack can (Python 3.11), so that case runs in the step environment (make test:
# `.venv-steps/bin/pytest -m steps`); in Airflow's, tests/integration/operators/test_failure_logs.py
# checks that it says where to run them instead.
@pytest.mark.parametrize("placement", [pytest.param("worker", marks=pytest.mark.steps), "interpreter", "pod"])
def test_every_step_operator_runs_in_the_placement(
    placement, airflow_db, mlflow_conn, mlflow_client, inputs, tmp_path, request, capfd
):
    from support.pod_player import PodPlayer

    conf = {**inputs, "schema_uri": str(tmp_path / "schema" / "schema.pbtxt")}
    (tmp_path / "schema").mkdir()
    kube = player = None
    capfd.readouterr()
    if placement == "pod":
        kube = request.getfixturevalue("kube")  # the fake cluster the kubernetes_default connection names
        player = PodPlayer(kube, POD_NAMESPACE, tmp_path / "pods")
        playing = _play_every_job(player, len(TASKS))
        dag_run = _run(placement, conf)
        playing.join(timeout=60)
        assert not player.errors, player.errors
    else:
        dag_run = _run(placement, conf)
    # dag.test() writes the task logs to stdout, the steps' own lines (and the pods' last lines) included.
    task_logs = capfd.readouterr().out
    assert task_states(dag_run) == dict.fromkeys(TASKS, "success")
    assert all(f"View run {task} at" in task_logs for task in TASKS), task_logs[-3000:]
    if placement == "pod":
        assert task_logs.count("Last lines of") == len(TASKS), task_logs[-3000:]
    _check_xcoms(dag_run, conf)
    run_ids = _check_runs(mlflow_client, f"placement_{placement}", dag_run, placement)
    if player is not None:
        _check_pods(kube, player, dag_run, run_ids, mlflow_conn.url)
    problems = log_problems(task_logs)
    assert not problems, "\n".join(problems)
