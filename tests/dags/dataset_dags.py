"""DAGs the dataset-version tests run with dag.test(); the dataset root comes from the run's conf."""

from __future__ import annotations

from airflow.sdk import DAG, Asset, task

from airflow_ml_provider.operators.step import MLStepOperator
from airflow_ml_provider.sensors.dataset import DatasetVersionSensor
from airflow_ml_provider.versions import dataset_version

CHECKED = Asset("test_dataset_checked", uri="file:///tmp/airflow-ml-provider-tests/checked")
VERSIONS = Asset("test_dataset_versions", uri="file:///tmp/airflow-ml-provider-tests/versions")

for deferrable in (False, True):
    with DAG(f"test_dataset_sensor_{'deferred' if deferrable else 'poke'}", schedule=None, catchup=False):
        DatasetVersionSensor(
            task_id="wait",
            uri="{{ dag_run.conf['root'] }}",
            deferrable=deferrable,
            poke_interval=0.2,
            timeout=60,
            outlets=[CHECKED],
        )

with DAG("test_dataset_sensor_no_asset", schedule=None, catchup=False):
    DatasetVersionSensor(
        task_id="wait",
        uri="{{ dag_run.conf['root'] }}",
        after_version="{{ dag_run.conf.get('after') or '' }}",
        poke_interval=0.2,
        timeout=5,
    )

with DAG("test_dataset_version_arg", schedule=[VERSIONS], catchup=False):
    MLStepOperator(
        task_id="echo_version",
        step="echo",
        spec={
            "payload": {"version": dataset_version(VERSIONS), "uri": dataset_version(VERSIONS, field="uri")}
        },
    )

    @task
    def whole(payload: dict) -> dict:
        return payload

    whole(dataset_version(field=None))
