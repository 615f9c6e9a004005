"""
Connection secrets stay secret: a pipeline run against an MLflow server with basic auth leaves the
password in no MLflow param, tag, run name or logged spec, and in no line of the task logs; a
password written inside the connection's Tracking URI is a credential that is shown nowhere.
"""

from __future__ import annotations

import json

import pytest
from support.harness import AUTH_ADMIN_PASSWORD, load_dag, run_dag

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


def _user_with_a_canary_password(server) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A new admin of the basic-auth server whose password is this test's own (no earlier mask)."""
    import uuid

    import requests

    user, canary = f"u{uuid.uuid4().hex[:8]}", f"canary-{uuid.uuid4().hex}"
    admin = ("admin", AUTH_ADMIN_PASSWORD)
    api = f"{server.url}/api/2.0/mlflow/users"
    requests.post(
        f"{api}/create", json={"username": user, "password": canary}, auth=admin, timeout=30
    ).raise_for_status()
    requests.patch(
        f"{api}/update-admin", json={"username": user, "is_admin": True}, auth=admin, timeout=30
    ).raise_for_status()
    return user, canary


def test_a_password_written_in_the_tracking_uri_is_a_credential_shown_nowhere(
    airflow_db, mlflow_auth_server, monkeypatch, capfd, tmp_path
):
    """
    ``http://user:<canary>@host:port`` as the connection's host, no login, password or ui_url: the
    run authenticates with it, and the canary is in no XCom, extra link, task log line (the
    provider's and MLflow's "View run at"), MLflow record, settings repr, lineage JSON or page,
    lineage error, or InfraValidation spec.
    """
    from types import SimpleNamespace

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from mlflow.tracking import MlflowClient
    from sqlalchemy import select

    from airflow_ml_provider.hooks.mlflow import MlflowHook
    from airflow_ml_provider.links import mlflow as links
    from airflow_ml_provider.operators.infra_validation import InfraValidationOperator
    from airflow_ml_provider.plugins.lineage_app import OPEN_LINKS_SCRIPT, _environment
    from airflow_ml_provider.plugins.lineage_data import LineageError, collect_lineage

    user, canary = _user_with_a_canary_password(mlflow_auth_server)
    host = f"http://{user}:{canary}@127.0.0.1:{mlflow_auth_server.port}"
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps({"conn_type": "mlflow", "host": host}))
    dag = load_dag("test_secrets_stay_secret")
    dag_run = run_dag(dag)  # it authenticated: the tasks' runs were created on the basic-auth server
    logs = capfd.readouterr()
    shown: dict[str, str] = {"logs": logs.out + logs.err}
    assert "View run in_process at: http://127.0.0.1:" in shown["logs"]  # MLflow's line, without the password

    tis = {ti.task_id: ti for ti in dag_run.get_task_instances()}
    with create_session() as session:
        rows = session.scalars(
            select(XComModel).where(XComModel.dag_id == dag.dag_id, XComModel.run_id == dag_run.run_id)
        ).all()
        xcoms = {(x.task_id, x.key): XComModel.deserialize_value(x) for x in rows}
    shown["xcom"] = json.dumps(list(xcoms.items()), default=str)
    assert xcoms[("in_process", "mlflow_run_url")].startswith(
        f"http://127.0.0.1:{mlflow_auth_server.port}/#/"
    )
    monkeypatch.setattr(links.BaseXCom, "get_value", lambda ti_key, key: xcoms.get((ti_key.task_id, key)))
    shown["links"] = json.dumps(
        [
            link.get_link(dag.get_task(task_id), ti_key=ti.key)
            for task_id, ti in tis.items()
            for link in dag.get_task(task_id).operator_extra_links
        ]
    )
    assert f"127.0.0.1:{mlflow_auth_server.port}/#/experiments/" in shown["links"]

    client = MlflowClient(tracking_uri=mlflow_auth_server.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")  # this test's own client only
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", AUTH_ADMIN_PASSWORD)
    experiment = client.get_experiment_by_name("test_secrets_stay_secret")
    runs = client.search_runs([experiment.experiment_id], f"tags.`airflow.run_id` = '{dag_run.run_id}'")
    assert len(runs) == 3
    for run in runs:
        shown[f"run {run.info.run_name}"] = json.dumps([run.data.params, run.data.tags, run.info.run_name])
        for artifact in client.list_artifacts(run.info.run_id, "step"):
            shown[artifact.path] = open(client.download_artifacts(run.info.run_id, artifact.path)).read()
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")

    hook = MlflowHook()
    shown["repr"] = repr(hook.settings)
    lineage = collect_lineage(hook, dag.dag_id, dag_run.run_id, [experiment.experiment_id])
    shown["lineage json"] = json.dumps(lineage)
    shown["lineage page"] = (
        _environment()
        .get_template("ml_lineage.html")
        .render(
            lineage=lineage,
            dag_id=dag.dag_id,
            run_id=dag_run.run_id,
            task_id=None,
            open_links_script=OPEN_LINKS_SCRIPT,
        )
    )
    assert lineage["experiment_url"].startswith(f"http://127.0.0.1:{mlflow_auth_server.port}/#/")

    infra = InfraValidationOperator(task_id="infra", model_uri="models:/m/1", data_uri=str(tmp_path))
    with infra._scratch_dir():  # the task's scratch directory, removed after
        shown["infra spec"] = json.dumps(infra.build_spec({}, SimpleNamespace(hook=hook)))  # type: ignore[arg-type]

    # MLflow down: the lineage view's error names the server, without the password.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DOWN",
        json.dumps({"conn_type": "mlflow", "host": f"http://{user}:{canary}@127.0.0.1:9"}),
    )
    with pytest.raises(LineageError) as down:
        collect_lineage(MlflowHook("mlflow_down"), dag.dag_id, dag_run.run_id, ["1"])
    shown["lineage error"] = str(down.value)
    assert "127.0.0.1:9" in shown["lineage error"]

    leaks = [where for where, text in shown.items() if canary in text]
    assert leaks == []
