"""
A DAG scheduled on a DatasetVersionSensor's outlet reads its version as one scheduled on a watcher.

A real api-server, scheduler (LocalExecutor), dag-processor and triggerer on PostgreSQL, a real
mlflow server, the DAGs of ``tests/cluster_dags/sensor_outlet_dags.py``. One version lands; the
watcher's asset event starts ``outlet_on_watcher``; the sensor DAG, started through the REST API,
delivers the same version and its outlet event starts ``outlet_on_sensor``. Both runs must
succeed with the version in their rendered templated field, in their XCom, and in their MLflow
parent run's ``dataset.<asset>.*`` tags. Only states and values are asserted, never timings.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from support.cluster import AirflowCluster
from support.dataset_fixtures import land
from support.harness import DATABASE_URL_ENV, MlflowServer, postgres_base_url

pytestmark = pytest.mark.slow

TESTS = Path(__file__).parents[1]
DAG_FILE = TESTS / "cluster_dags" / "sensor_outlet_dags.py"
SENSOR_DAG = "outlet_sensor"
CONSUMERS = {"outlet_on_sensor": "outlet_checked", "outlet_on_watcher": "outlet_watched"}
WATCHER = "outlet_watcher"
# What both ways of delivering one version must agree on (discovered_at is each reader's own clock).
SAME_FIELDS = ("version", "uri", "fingerprint", "completed_at", "name", "extra", "source", "root")


class Env:
    def __init__(self, cluster: AirflowCluster, root: Path) -> None:
        self.cluster = cluster
        self.dataset = root / "churn"

    def trigger(self, dag_id: str) -> str:
        """Start a DAG run through the REST API, as a user would; return its run id."""
        response = requests.post(
            f"{self.cluster.api_url}/api/v2/dags/{dag_id}/dagRuns",
            json={"logical_date": None, "conf": {}},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["dag_run_id"])

    def finished_run(self, dag_id: str) -> dict[str, Any] | None:
        runs = [r for r in self.cluster.dag_runs(dag_id) if r["state"] in ("success", "failed")]
        return runs[0] if runs else None

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        rows = self.cluster._query(
            "SELECT value FROM xcom WHERE dag_id = %s AND run_id = %s AND task_id = %s"
            " AND key = 'return_value' AND map_index = -1",
            (dag_id, run_id, task_id),
        )
        assert rows, f"no XCom return_value of {dag_id}.{task_id} in {run_id}"
        return _json(rows[0]["value"])

    def rendered(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        rows = self.cluster._query(
            "SELECT rendered_fields FROM rendered_task_instance_fields"
            " WHERE dag_id = %s AND run_id = %s AND task_id = %s AND map_index = -1",
            (dag_id, run_id, task_id),
        )
        assert rows, f"no rendered fields of {dag_id}.{task_id} in {run_id}"
        return dict(_json(rows[0]["rendered_fields"]))


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, mlflow_server: MlflowServer) -> Iterator[Env]:
    if not postgres_base_url():
        pytest.skip(f"{DATABASE_URL_ENV} is not set: the cluster needs a PostgreSQL metadata DB")
    work = tmp_path_factory.mktemp("sensor-outlet")
    dags, root = work / "dags", work / "data"
    dags.mkdir()
    root.mkdir()
    shutil.copy(DAG_FILE, dags / DAG_FILE.name)
    extra_env = {
        "ML_TEST_OUTLET_ROOT": str(root),
        "AIRFLOW_CONN_MLFLOW_DEFAULT": mlflow_server.connection_json(),
        "MLFLOW_LOG_UV_FILES": "false",
        "AIRFLOW_ML_SCRATCH_DIR": str(work / "scratch"),
    }
    with AirflowCluster(work / "cluster", dags, env=extra_env) as cluster:
        cluster.start()
        for dag_id in (SENSOR_DAG, *CONSUMERS):
            cluster.wait_dag_parsed(dag_id, watchers=[WATCHER], timeout=180)
        cluster.wait_watchers_running([WATCHER], timeout=120)
        yield Env(cluster, root)


def parent_run_tags(mlflow_client: Any, dag_id: str, run_id: str) -> dict[str, str]:
    experiment = mlflow_client.get_experiment_by_name(dag_id)
    (parent,) = mlflow_client.search_runs(
        [experiment.experiment_id],
        f"tags.`airflow.run_id` = '{run_id}' and tags.`airflow.role` = 'dag_run'",
    )
    return dict(parent.data.tags)


def test_a_dag_on_the_sensor_outlet_reads_the_version_like_a_dag_on_the_watcher(
    env: Env, mlflow_client: Any, record_property: Any
):
    started = time.monotonic()
    folder = land(env.dataset, "0001")
    sensor_run = env.trigger(SENSOR_DAG)
    cluster = env.cluster
    runs = {
        dag_id: cluster.wait_for(
            lambda dag_id=dag_id: env.finished_run(dag_id), timeout=300, interval=1, what=f"a run of {dag_id}"
        )
        for dag_id in (SENSOR_DAG, *CONSUMERS)
    }
    record_property("seconds_to_all_runs_finished", round(time.monotonic() - started, 1))

    for dag_id, run in runs.items():
        tis = cluster.task_instances(dag_id, run["run_id"])
        assert run["state"] == "success", (dag_id, tis, cluster.tails())
        assert {t["state"] for t in tis} == {"success"}, (dag_id, tis)
    assert runs[SENSOR_DAG]["run_id"] == sensor_run
    delivered = env.xcom(SENSOR_DAG, sensor_run, "wait")
    assert (delivered["version"], delivered["uri"]) == ("0001", str(folder))

    payloads = {}
    for dag_id, asset in CONSUMERS.items():
        run_id = runs[dag_id]["run_id"]
        assert runs[dag_id]["run_type"] == "asset_triggered", runs[dag_id]
        consumed = cluster.dag_run_asset_events(dag_id)[run_id]
        assert [e["asset_name"] for e in consumed] == [asset], consumed
        expected = {"version": "0001", "uri": str(folder), "fingerprint": delivered["fingerprint"]}
        # dataset_version(...) in a templated field: rendered, and what the step received.
        assert env.rendered(dag_id, run_id, "echo_version")["spec"] == {"payload": expected}
        assert env.xcom(dag_id, run_id, "echo_version")["payload"] == expected
        # dataset_version(field=None): the whole payload, naming the asset that carried it.
        payloads[dag_id] = env.xcom(dag_id, run_id, "whole")
        assert payloads[dag_id]["asset"] == asset
        # The parent run's tags: dataset.<asset>.version, .uri, .fingerprint, .completed_at.
        tags = parent_run_tags(mlflow_client, dag_id, run_id)
        prefix = f"dataset.{asset}."
        assert {k[len(prefix) :]: v for k, v in tags.items() if k.startswith(prefix)} == {
            "version": "0001",
            "uri": str(folder),
            "fingerprint": delivered["fingerprint"],
            "completed_at": delivered["completed_at"],
        }

    on_sensor, on_watcher = payloads["outlet_on_sensor"], payloads["outlet_on_watcher"]
    assert {k: on_sensor.get(k) for k in SAME_FIELDS} == {k: on_watcher.get(k) for k in SAME_FIELDS}
    assert {k: on_sensor[k] for k in SAME_FIELDS} == {k: delivered[k] for k in SAME_FIELDS}
