"""
Example: new dataset versions start DAG runs by themselves, within seconds.

``example_dataset_versions`` is scheduled on the asset ``churn``, whose watcher
(``DatasetVersionTrigger``) polls ``<landing>/churn`` every second. Each complete version folder
(``version=NNNN/`` holding ``_SUCCESS``, as ``generate_dataset`` writes them) produces one asset
event, and so a DAG run, that reads the version through ``dataset_version(...)``. The version is
also tagged on the DAG run's MLflow parent run (``dataset.churn.version``).

``example_dataset_version_sensor`` does the same inside a DAG run instead: a deferrable
``DatasetVersionSensor`` waits for a version newer than the one it delivered last and passes it
downstream through XCom and through its outlet asset's event.

The landing folder is ``$AIRFLOW_ML_EXAMPLE_LANDING`` (default ``/tmp/airflow-ml-provider/landing``).
Land a version with: ``python -m airflow_ml_provider.ml generate_dataset`` or the demo generator.
"""

from __future__ import annotations

import os

from airflow.sdk import DAG, Asset, AssetWatcher

from airflow_ml_provider.operators.step import MLStepOperator
from airflow_ml_provider.sensors.dataset import DatasetVersionSensor
from airflow_ml_provider.triggers.dataset import DatasetVersionTrigger
from airflow_ml_provider.versions import dataset_version

LANDING = os.environ.get("AIRFLOW_ML_EXAMPLE_LANDING", "/tmp/airflow-ml-provider/landing")
CHURN_ROOT = f"{LANDING}/churn"

# [START howto_trigger_dataset_version]
churn = Asset(
    "churn",
    uri=f"file://{CHURN_ROOT}",
    watchers=[
        AssetWatcher(
            name="churn_new_version",
            trigger=DatasetVersionTrigger(CHURN_ROOT, pattern="version=*", poll_interval=1.0),
        )
    ],
)

with DAG(
    dag_id="example_dataset_versions",
    schedule=[churn],
    catchup=False,
    max_active_runs=1,
    tags=["example", "ml", "triggering"],
) as dag:
    MLStepOperator(
        task_id="describe_version",
        step="describe_dataset",
        spec={"uri": dataset_version(churn, field="uri")},
    )
# [END howto_trigger_dataset_version]

# [START howto_sensor_dataset_version]
with DAG(
    dag_id="example_dataset_version_sensor",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["example", "ml", "triggering"],
) as sensor_dag:
    wait = DatasetVersionSensor(
        task_id="wait_for_version",
        uri=CHURN_ROOT,
        deferrable=True,
        poke_interval=5,
        timeout=6 * 3600,
        outlets=[Asset("churn_checked", uri=f"file://{LANDING}/churn-checked")],
    )
    describe = MLStepOperator(
        task_id="describe_version",
        step="describe_dataset",
        spec={"uri": "{{ ti.xcom_pull('wait_for_version')['uri'] }}"},
    )
    wait >> describe
# [END howto_sensor_dataset_version]
