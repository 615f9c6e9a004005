"""The run model through real Airflow (dag.test) against a real mlflow server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.harness import load_dag, run_dag, task_states
from support.step_env import run_in_step_env

pytestmark = pytest.mark.integration


def _runs(client: Any, dag_id: str, run_id: str, **tags: str) -> list[Any]:
    experiment = client.get_experiment_by_name(dag_id)
    assert experiment is not None, f"no experiment {dag_id}"
    tags = {"airflow.run_id": run_id, **tags}
    clauses = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return list(client.search_runs([experiment.experiment_id], filter_string=clauses, max_results=100))


def _xcom(dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id).all()
        return {row.key: XComModel.deserialize_value(row) for row in rows}


def test_one_parent_run_per_dag_run_and_one_nested_run_per_task(airflow_db, mlflow_conn, mlflow_client):
    dag_id = "test_tracking_chain"
    dag_run = run_dag(load_dag(dag_id))

    (parent,) = _runs(mlflow_client, dag_id, dag_run.run_id, **{"airflow.role": "dag_run"})
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == dag_run.run_id
    tasks = _runs(mlflow_client, dag_id, dag_run.run_id, **{"airflow.role": "task"})
    assert sorted(r.data.tags["airflow.task_id"] for r in tasks) == ["a", "b"]
    for run in tasks:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["airflow.dag_id"] == dag_id
        assert run.data.tags["airflow.map_index"] == "-1"
        assert run.data.tags["airflow.try_number"] == "1"
        assert run.info.status == "FINISHED"
    a_run = next(r for r in tasks if r.data.tags["airflow.task_id"] == "a")
    assert a_run.data.metrics["m"] == 0.5
    assert a_run.data.params["step"] == "echo"

    xcom = _xcom(dag_id, dag_run.run_id, "a")
    assert xcom["mlflow_run_id"] == a_run.info.run_id
    expected = f"{mlflow_conn.url}/#/experiments/{a_run.info.experiment_id}/runs/{a_run.info.run_id}"
    assert xcom["mlflow_run_url"] == expected
    assert xcom["_link_MlflowRunLink"] == expected  # what the "MLflow run" extra link opens
    assert xcom["_link_MlflowExperimentLink"] == f"{mlflow_conn.url}/#/experiments/{a_run.info.experiment_id}"
    assert xcom["return_value"] == {"payload": 1, "mlflow": {"metrics": {"m": 0.5}}}
    # Templated spec rendered from upstream XCom.
    assert _xcom(dag_id, dag_run.run_id, "b")["return_value"] == {"payload": "1"}


def test_retried_task_resumes_its_own_run(
    airflow_db, mlflow_conn, mlflow_client, tmp_path: Path, record_property
):
    dag_id = "test_tracking_retry"
    dag_run = run_dag(load_dag(dag_id), conf={"marker": str(tmp_path / "marker")})

    assert task_states(dag_run) == {"flaky": "success"}
    runs = _runs(mlflow_client, dag_id, dag_run.run_id, **{"airflow.task_id": "flaky"})
    assert len(runs) == 1, [r.info.run_id for r in runs]
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["airflow.try_number"] == "2"
    assert runs[0].data.metrics["recovered"] == 1.0
    assert len(_runs(mlflow_client, dag_id, dag_run.run_id, **{"airflow.role": "dag_run"})) == 1
    record_property("measured", "2 tries: 1 task run (try 2 in it, FINISHED), 1 parent run")


def test_failed_task_ends_its_run_failed(airflow_db, mlflow_conn, mlflow_client):
    dag_id = "test_tracking_failure"
    dag_run = run_dag(load_dag(dag_id), expect="failed")

    (run,) = _runs(mlflow_client, dag_id, dag_run.run_id, **{"airflow.task_id": "broken"})
    assert run.info.status == "FAILED"
    (parent,) = _runs(mlflow_client, dag_id, dag_run.run_id, **{"airflow.role": "dag_run"})
    assert parent.info.status == "FAILED"


def test_mapped_tasks_share_the_parent_run(airflow_db, mlflow_conn, mlflow_client):
    dag_id = "test_tracking_mapped"
    dag_run = run_dag(load_dag(dag_id))

    runs = _runs(mlflow_client, dag_id, dag_run.run_id, **{"airflow.task_id": "m"})
    assert sorted(r.data.tags["airflow.map_index"] for r in runs) == ["0", "1", "2"]
    assert sorted(r.info.run_name for r in runs) == ["m[0]", "m[1]", "m[2]"]
    (parent,) = _runs(mlflow_client, dag_id, dag_run.run_id, **{"airflow.role": "dag_run"})
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}


def test_bad_connection_fails_the_task_naming_the_uri_without_the_token(
    airflow_db, mlflow_auth_server, monkeypatch, capfd
):
    import json

    from support.harness import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_UNREACHABLE",
        json.dumps({"conn_type": "mlflow", "host": dead, "password": "tok-unreachable-42"}),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_WRONG_TOKEN",
        json.dumps({"conn_type": "mlflow", "host": mlflow_auth_server.url, "password": "tok-wrong-42"}),
    )
    dag_run = run_dag(load_dag("test_tracking_bad_connection"), expect="failed")
    assert task_states(dag_run) == {"unreachable": "failed", "wrong_token": "failed"}

    # dag.test() runs the tasks in this process and writes their logs to stdout.
    output = capfd.readouterr()
    text = output.out + output.err
    assert f"MLflow tracking server {dead} is unreachable" in text
    assert f"MLflow tracking server {mlflow_auth_server.url} refused the credentials" in text
    assert "tok-unreachable-42" not in text and "tok-wrong-42" not in text


@pytest.mark.slow
def test_schema_inference_operator_stores_and_records_the_schema(
    airflow_db, mlflow_conn, mlflow_client, tmp_path
):
    dag_id = "test_schema_inference"
    dag_run = run_dag(load_dag(dag_id), conf={"root": str(tmp_path)})

    schema = (tmp_path / "schema.pbtxt").read_text()
    assert 'name: "income"' in schema and 'name: "region"' in schema
    result = _xcom(dag_id, dag_run.run_id, "infer")["return_value"]
    assert result["schema_uri"] == str(tmp_path / "schema.pbtxt")
    assert result["example_count"] == 500
    (run,) = _runs(mlflow_client, dag_id, dag_run.run_id, **{"airflow.task_id": "infer"})
    assert [a.path for a in mlflow_client.list_artifacts(run.info.run_id, "validation")] == [
        "validation/schema.pbtxt"
    ]


@pytest.mark.slow
def test_validation_runs_in_another_interpreter(airflow_db, mlflow_conn, mlflow_client, tmp_path, capfd):
    """placement="interpreter": the step runs in a child interpreter; its log streams into the task log."""
    from airflow_ml_provider.ml.datagen import generate_dataset

    # A curated schema from a clean version (inferred in the step environment, where TFDV is); the
    # DAG's version 2 lacks a column.
    clean = generate_dataset({"root": str(tmp_path / "clean"), "rows": 800})
    spec = {"data_uri": clean["versions"][0]["uri"], "schema_uri": str(tmp_path / "schema.pbtxt")}
    run_in_step_env(f"from airflow_ml_provider.ml.validation import infer_schema; infer_schema({spec!r})")
    dag_id = "test_validation_in_another_python"
    dag_run = run_dag(load_dag(dag_id), conf={"root": str(tmp_path)})

    summary = _xcom(dag_id, dag_run.run_id, "validate")["return_value"]
    assert summary["schema_created"] is False
    assert any(a["feature"] == "age" for a in summary["anomalies"]), summary["anomalies"]
    assert "[step validate_data]" in capfd.readouterr().out  # the child's lines, streamed
    (run,) = _runs(mlflow_client, dag_id, dag_run.run_id, **{"airflow.task_id": "validate"})
    assert run.data.metrics["anomaly_count"] >= 1
