"""DatasetVersionSensor through real Airflow (dag.test: poke, and deferred to its trigger run inline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.dataset_fixtures import land
from support.harness import asset_event_extras, load_dag, run_dag, task_states

from airflow_ml_provider.dataset_version import DatasetVersion

pytestmark = pytest.mark.integration


def _xcom(dag_id: str, run_id: str, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id, key="return_value")
            .one()
        )
        return XComModel.deserialize_value(row)


@pytest.mark.parametrize("mode", ["poke", "deferred"])
def test_sensor_delivers_newer_versions_and_remembers_the_last(airflow_db, tmp_path: Path, mode: str):
    dag_id = f"test_dataset_sensor_{mode}"
    root = tmp_path / "churn"
    land(root, "0001")
    land(root, "0002")
    land(root, "0003", marker=False)  # incomplete: not a version yet
    dag = load_dag(dag_id)

    first = run_dag(dag, conf={"root": str(root)})
    value = _xcom(dag_id, first.run_id, "wait")
    assert value["version"] == "0002" and value["covered_versions"] == ["0001", "0002"]
    assert value["uri"] == f"{root}/version=0002"
    (extra,) = asset_event_extras("test_dataset_checked", first.run_id)
    assert extra["version"] == "0002" and extra["fingerprint"] == value["fingerprint"]
    # One payload: the outlet event carries what the XCom holds, read back by the same type.
    found = DatasetVersion.from_event_extra(extra)
    assert (
        found is not None and found.to_payload() == value == DatasetVersion.from_payload(value).to_payload()
    )

    (root / "version=0003" / "_SUCCESS").touch()
    second = run_dag(dag, conf={"root": str(root)})
    value = _xcom(dag_id, second.run_id, "wait")
    # The asset state store kept 0002 as delivered: only 0003 is newer.
    assert value["version"] == "0003" and value["previous_version"] == "0002"
    assert value["covered_versions"] == ["0003"]


def test_sensor_without_an_asset_remembers_through_its_xcom(airflow_db, tmp_path: Path):
    dag_id = "test_dataset_sensor_no_asset"
    root = tmp_path / "sales"
    land(root, "5")
    dag = load_dag(dag_id)
    first = run_dag(dag, conf={"root": str(root)})
    assert _xcom(dag_id, first.run_id, "wait")["version"] == "5"
    # Nothing newer than what it delivered: the sensor times out (timeout=5 s).
    failed = run_dag(dag, conf={"root": str(root)}, expect="failed")
    assert task_states(failed) == {"wait": "failed"}
    land(root, "6")
    second = run_dag(dag, conf={"root": str(root)})
    value = _xcom(dag_id, second.run_id, "wait")
    assert (value["version"], value["previous_version"]) == ("6", "5")
    land(root, "7")  # with two earlier deliveries, the newest one counts
    third = run_dag(dag, conf={"root": str(root)})
    value = _xcom(dag_id, third.run_id, "wait")
    assert (value["version"], value["previous_version"], value["covered_versions"]) == ("7", "6", ["7"])
    # An explicit after_version wins over what it remembers.
    again = run_dag(dag, conf={"root": str(root), "after": "4"})
    assert _xcom(dag_id, again.run_id, "wait")["covered_versions"] == ["5", "6", "7"]


def test_sensor_bad_argument_fails_naming_it(airflow_db, tmp_path: Path):
    dag = load_dag("test_dataset_sensor_poke")
    task = dag.get_task("wait")
    original = task.ordering
    task.ordering = "newest"
    try:
        failed = run_dag(dag, conf={"root": str(tmp_path)}, expect="failed")
    finally:
        task.ordering = original
    assert task_states(failed) == {"wait": "failed"}


def test_dataset_version_from_conf_reaches_fields_and_the_parent_run(
    airflow_db, mlflow_conn, mlflow_client, tmp_path: Path
):
    dag_id = "test_dataset_version_arg"
    conf = {"dataset_version": {"version": "0007", "uri": f"{tmp_path}/version=0007", "name": "churn"}}
    dag_run = run_dag(load_dag(dag_id), conf=conf)
    assert _xcom(dag_id, dag_run.run_id, "echo_version")["payload"] == {
        "version": "0007",
        "uri": f"{tmp_path}/version=0007",
    }
    assert _xcom(dag_id, dag_run.run_id, "whole")["version"] == "0007"
    experiment = mlflow_client.get_experiment_by_name(dag_id)
    (parent,) = mlflow_client.search_runs(
        [experiment.experiment_id],
        f"tags.`airflow.run_id` = '{dag_run.run_id}' and tags.`airflow.role` = 'dag_run'",
    )
    assert parent.data.tags["dataset.churn.version"] == "0007"
    assert parent.data.tags["dataset.churn.uri"] == f"{tmp_path}/version=0007"


def test_dataset_version_missing_fails_with_a_clear_message(airflow_db, mlflow_conn, caplog):
    dag_run = run_dag(load_dag("test_dataset_version_arg"), expect="failed")
    assert task_states(dag_run)["echo_version"] == "failed"
    assert "has no dataset version from asset 'test_dataset_versions'" in caplog.text
