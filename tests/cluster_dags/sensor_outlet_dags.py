"""
DAGs of ``tests/integration/test_sensor_outlet_scheduling.py``: one dataset, read two ways.

* ``outlet_sensor``: a ``DatasetVersionSensor`` on the dataset root, whose outlet is the asset
  ``outlet_checked``;
* ``outlet_on_sensor``: scheduled on ``outlet_checked`` (the sensor's outlet);
* ``outlet_on_watcher``: scheduled on ``outlet_watched``, an asset whose ``DatasetVersionTrigger``
  watches the same root.

Both consumers read the version the same way: ``dataset_version(...)`` in an ``MLStepOperator``'s
templated ``spec`` (the ``echo`` step returns it), the whole payload in a ``@task``, and the
``dataset.<asset>.*`` tags their MLflow parent run gets. No TensorFlow anywhere.
"""

from __future__ import annotations

import os
from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher, task

from airflow_ml_provider.operators.step import MLStepOperator
from airflow_ml_provider.sensors.dataset import DatasetVersionSensor
from airflow_ml_provider.triggers.dataset import DatasetVersionTrigger
from airflow_ml_provider.versions import dataset_version

ROOT = os.environ.get("ML_TEST_OUTLET_ROOT", "/tmp/airflow-ml-provider/sensor-outlet")
DATASET = f"{ROOT}/churn"

CHECKED = Asset("outlet_checked", uri=f"file://{ROOT}/checked")
WATCHED = Asset(
    "outlet_watched",
    uri=f"file://{DATASET}",
    watchers=[AssetWatcher(name="outlet_watcher", trigger=DatasetVersionTrigger(DATASET, poll_interval=1.0))],
)

with DAG("outlet_sensor", schedule=None, catchup=False, tags=["sensor-outlet"]):
    DatasetVersionSensor(
        task_id="wait", uri=DATASET, mode="poke", poke_interval=1, timeout=300, outlets=[CHECKED]
    )


def consumer(dag_id: str, asset: Asset) -> None:
    with DAG(dag_id, schedule=[asset], catchup=False, tags=["sensor-outlet"]):
        MLStepOperator(
            task_id="echo_version",
            step="echo",
            spec={
                "payload": {
                    "version": dataset_version(asset),
                    "uri": dataset_version(asset, field="uri"),
                    "fingerprint": dataset_version(asset, field="fingerprint"),
                }
            },
        )

        @task
        def whole(payload: dict[str, Any]) -> dict[str, Any]:
            return payload

        whole(dataset_version(asset, field=None))


consumer("outlet_on_sensor", CHECKED)
consumer("outlet_on_watcher", WATCHED)
