"""
Connection secrets stay secret: a pipeline run against an MLflow server with basic auth leaves the
password in no MLflow param, tag, run name or logged spec, and in no line of the task logs.
"""

from __future__ import annotations

import json

import pytest
from harness import AUTH_ADMIN_PASSWORD, load_dag, run_dag

pytestmark = pytest.mark.integration


def test_the_mlflow_password_reaches_no_record_and_no_log(airflow_db, mlflow_auth_server, monkeypatch, capfd):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DEFAULT",
        mlflow_auth_server.connection_json(login="admin", password=AUTH_ADMIN_PASSWORD),
    )
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")  # this test's own client only
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", AUTH_ADMIN_PASSWORD)
    dag_run = run_dag(load_dag("test_secrets_stay_secret"))
    logs = capfd.readouterr()

    client = MlflowClient(tracking_uri=mlflow_auth_server.url)
    experiment = client.get_experiment_by_name("test_secrets_stay_secret")
    runs = client.search_runs([experiment.experiment_id], f"tags.`airflow.run_id` = '{dag_run.run_id}'")
    assert len(runs) == 3  # the DAG run's parent run and one run per task: the check saw them all
    for run in runs:
        recorded = json.dumps(
            {
                "params": run.data.params,
                "tags": run.data.tags,
                "metrics": list(run.data.metrics),
                "name": run.info.run_name,
            }
        )
        assert AUTH_ADMIN_PASSWORD not in recorded, run.info.run_name
        for artifact in client.list_artifacts(run.info.run_id, "step"):
            text = open(client.download_artifacts(run.info.run_id, artifact.path)).read()
            assert AUTH_ADMIN_PASSWORD not in text, artifact.path
    # dag.test() runs the tasks in this process and writes their logs to stdout.
    assert "Running step echo in-process" in logs.out + logs.err
    assert "Running step echo with" in logs.out + logs.err  # the child interpreter's task
    assert AUTH_ADMIN_PASSWORD not in logs.out + logs.err
