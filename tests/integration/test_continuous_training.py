"""
dags_examples/continuous_training.py under dag.test() with real TFDV, TensorFlow (2 worker
processes), TFMA and a real mlflow server: the first version bootstraps the schema and the first
champion; the deployment DAG finds it and guards its live metric; a version with a schema break,
picked up by the scheduled variant's sensor, is stopped by validation and nothing downstream runs.

(The watcher path itself, new version -> asset event -> DAG run on a real scheduler and triggerer,
is tested in tests/integration/triggers/test_dataset_watcher_cluster.py.)
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.harness import load_dag, log_problems, run_dag, task_states, task_xcom

from airflow_ml_provider.ml.datagen import generate_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = Path(__file__).parents[2] / "dags_examples"
FRESHNESS_STAGES = ("run_started", "trained", "promoted", "decided")
PIPELINE = ("validate", "train", "evaluate", "infra_validate", "promote")
# The optional tuning: the branch, and tune (run when params.tune_trials > 0).
TUNING = ("tune_or_train", "tune")


def test_continuous_training_tunes_bootstraps_a_champion_then_stops_a_schema_break(
    airflow_db, mlflow_conn, mlflow_client, tmp_path, monkeypatch, capfd
):
    landing = tmp_path / "landing"
    monkeypatch.setenv("AIRFLOW_ML_EXAMPLE_LANDING", str(landing))  # read when the file is parsed
    root = landing / "churn_training_data"
    model = f"churn_ct_{uuid.uuid4().hex[:6]}"
    params = {"state_root": str(tmp_path / "state"), "model_name": model, "epochs": 2, "workers": 2}

    [v1] = generate_dataset({"root": str(root), "versions": [1], "rows": 3000})["versions"]
    completed = datetime.fromtimestamp((Path(v1["uri"]) / "_SUCCESS").stat().st_mtime, UTC).isoformat()
    version = {"version": v1["version"], "uri": v1["uri"], "completed_at": completed}
    capfd.readouterr()
    first = run_dag(
        load_dag("continuous_training", EXAMPLES),
        conf={**params, "tune_trials": 2, "dataset_version": version},
    )
    assert task_states(first) == dict.fromkeys((*PIPELINE, *TUNING), "success")
    # A clean run logs no error and no traceback: every task's log (dag.test() writes the task logs,
    # the workers' lines included, to stdout).
    task_logs = capfd.readouterr().out
    assert all(f"View run {task} at" in task_logs for task in (*PIPELINE, "tune")), task_logs[-3000:]
    problems = log_problems(task_logs)
    assert not problems, "\n".join(problems)
    assert (tmp_path / "state" / "schema" / "schema.pbtxt").exists()  # bootstrapped by v1
    train = task_xcom(first, "train")
    assert (train["workers"], train["strategy"]) == (2, "multi_worker_mirrored")
    tuned = task_xcom(first, "tune")  # the fixed values and the best trial's
    assert set(tuned) == {"epochs", "batch_size", "learning_rate", "hidden_units"}
    train_params = mlflow_client.get_run(train["mlflow_run_id"]).data.params
    assert {k[3:]: v for k, v in train_params.items() if k.startswith("hp.")} == {
        k: str(v) for k, v in tuned.items()
    }
    promotion = task_xcom(first, "promote")
    assert promotion["version"] == "1" and promotion["previous_version"] is None
    assert mlflow_client.get_registered_model(model).aliases == {"champion": "1"}
    experiment = mlflow_client.get_experiment_by_name("continuous_training")
    runs = mlflow_client.search_runs([experiment.experiment_id], f"tags.`airflow.run_id` = '{first.run_id}'")
    assert {first.run_id, *PIPELINE, "tune"} <= {r.info.run_name for r in runs}  # the branch is a plain @task
    parent = next(r for r in runs if r.info.run_name == first.run_id)
    assert any(v == "0001" for k, v in parent.data.tags.items() if k.startswith("dataset."))
    # Freshness: seconds from the version's completion to each stage, on the parent run.
    seconds = [parent.data.metrics[f"freshness.version_to_{s}_seconds"] for s in FRESHNESS_STAGES]
    assert 0 <= seconds[0] <= seconds[1] <= seconds[2] == seconds[3], seconds
    assert parent.data.tags["freshness.decision"] == "promoted"

    # The extra links the Airflow UI shows open the records this run made.
    by_task = {r.data.tags.get("airflow.task_id"): r for r in runs}
    for task_id, link, artifact in (
        ("validate", "ValidationReportLink", "validation/report.html"),
        ("evaluate", "EvaluationReportLink", "evaluation/report.html"),
    ):
        run = by_task[task_id]
        url = _link(first, task_id, link)
        assert (
            url
            == f"{mlflow_conn.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/artifacts/{artifact}"
        )
        assert artifact in {
            a.path for a in mlflow_client.list_artifacts(run.info.run_id, artifact.split("/")[0])
        }
    assert (
        _link(first, "promote", "RegisteredModelVersionLink")
        == f"{mlflow_conn.url}/#/models/{model}/versions/1"
    )
    assert (
        _link(first, "train", "MlflowExperimentLink")
        == f"{mlflow_conn.url}/#/experiments/{experiment.experiment_id}"
    )

    # Serving logs v1's live AUC (healthy) where the deployment DAG's guard reads it.
    serving = mlflow_client.create_experiment(f"{model}_serving")
    serving_run = mlflow_client.create_run(serving, tags={"model_name": model, "model_version": "1"})
    mlflow_client.log_metric(serving_run.info.run_id, "live_auc", 0.81)
    deployed = run_dag(
        load_dag("deploy_champion", EXAMPLES),
        conf={"model_name": model, "guard_window": 1.5, "guard_interval": 0.5},
    )
    assert task_xcom(deployed, "deploy") == {
        "model_name": model,
        "version": "1",
        "source": mlflow_client.get_model_version(model, "1").source,
    }
    guarded = task_xcom(deployed, "guard")  # the first champion: nothing to roll back to, and healthy
    assert (guarded["version"], guarded["outcome"], guarded["values"][0]) == ("1", "healthy", 0.81)

    generate_dataset({"root": str(root), "versions": [2], "rows": 3000, "type_change": "income"})
    second = run_dag(load_dag("continuous_training_scheduled", EXAMPLES), conf=params)
    assert task_xcom(second, "wait_for_version")["version"] == "0002"
    assert task_states(second) == {
        "wait_for_version": "success",
        "validate": "skipped",
        **dict.fromkeys((*PIPELINE[1:], *TUNING), "skipped"),
    }
    assert mlflow_client.get_registered_model(model).aliases == {"champion": "1"}
    validation = mlflow_client.search_runs(
        [experiment.experiment_id],
        f"tags.`airflow.run_id` = '{second.run_id}' and tags.`airflow.task_id` = 'validate'",
    )
    assert [r.data.metrics["anomaly_count"] > 0 for r in validation] == [True]


def _link(dag_run: Any, task_id: str, link: str) -> Any:
    ti = next(t for t in dag_run.get_task_instances() if t.task_id == task_id)
    return ti.xcom_pull(task_ids=task_id, key=f"_link_{link}")


def test_kubernetes_variant_trains_as_pods_then_evaluates_and_promotes(
    airflow_db, mlflow_conn, mlflow_client, tmp_path, monkeypatch
):
    """
    continuous_training_kubernetes under dag.test(): the operator talks to a fake API server
    (tests/support/fake_kubernetes.py); the pods it asks for run for real as local processes with the
    manifest's command and environment (tests/support/pod_player.py), train, and log the model that
    evaluation and promotion then use.
    """
    from support.fake_kubernetes import fake_kubernetes_connection
    from support.pod_player import PodPlayer

    lake = tmp_path / "lake"
    monkeypatch.setenv("AIRFLOW_ML_EXAMPLE_LAKE", str(lake))  # read when the file is parsed
    model = f"churn_k8s_{uuid.uuid4().hex[:6]}"
    params = {"state_root": str(tmp_path / "state"), "model_name": model, "epochs": 2, "workers": 2}
    [v1] = generate_dataset({"root": str(lake), "versions": [1], "rows": 2000})["versions"]

    with fake_kubernetes_connection(monkeypatch) as kube:
        player = PodPlayer(kube, "ml-training", tmp_path / "pods")
        player.play_next()
        run = run_dag(
            load_dag("continuous_training_kubernetes", EXAMPLES),
            conf={**params, "dataset_version": {"version": v1["version"], "uri": v1["uri"]}},
        )
    assert not player.errors, player.errors
    assert task_states(run) == {
        **dict.fromkeys(PIPELINE, "success"),
        "tune_or_train": "success",
        "tune": "skipped",
    }
    assert task_xcom(run, "tune") is None
    [job] = [r.body for r in kube.recorded("POST", "jobs")]
    assert player.played == [job["metadata"]["name"]]
    assert job["metadata"]["namespace"] == "ml-training" and job["spec"]["completions"] == 2
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ml-training"
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "mlflow-credentials"}}]
    train = task_xcom(run, "train")
    assert (train["workers"], train["strategy"]) == (2, "multi_worker_mirrored")
    assert task_xcom(run, "evaluate")["candidate_model_uri"] == train["model_uri"]
    assert task_xcom(run, "promote")["version"] == "1"
    assert mlflow_client.get_registered_model(model).aliases == {"champion": "1"}
    assert (("ml-training", job["metadata"]["name"])) not in kube.services  # removed once done
