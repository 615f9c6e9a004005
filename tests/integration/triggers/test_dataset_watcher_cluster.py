"""
The example DAG on a real cluster: a version written by the demo generator starts it by itself.

A real api-server, scheduler, dag-processor and triggerer on PostgreSQL run the example DAG
``example_dataset_versions`` (an asset with a DatasetVersionTrigger watcher) against a real
mlflow server. (Bursts of versions across a triggerer SIGKILL and storage faults, 200 versions on
20 assets, are in tests/integration/test_reliability_cluster.py.)
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cluster import AirflowCluster
from support.harness import DATABASE_URL_ENV, MlflowServer, postgres_base_url

from airflow_ml_provider.ml.datagen import generate_dataset

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).parents[3] / "dags_examples" / "example_dataset_versions.py"
DAG_ID = "example_dataset_versions"
WATCHER = "churn_new_version"


class Env:
    def __init__(self, cluster: AirflowCluster, landing: Path) -> None:
        self.cluster = cluster
        self.root = landing / "churn"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, mlflow_server: MlflowServer) -> Iterator[Env]:
    if not postgres_base_url():
        pytest.skip(f"{DATABASE_URL_ENV} is not set: the cluster needs a PostgreSQL metadata DB")
    work = tmp_path_factory.mktemp("watcher-cluster")
    dags, landing = work / "dags", work / "landing"
    dags.mkdir()
    shutil.copy(EXAMPLE, dags / EXAMPLE.name)
    extra_env = {
        "AIRFLOW_ML_EXAMPLE_LANDING": str(landing),
        "AIRFLOW_CONN_MLFLOW_DEFAULT": mlflow_server.connection_json(),
    }
    with AirflowCluster(work / "cluster", dags, env=extra_env) as cluster:
        cluster.start()
        cluster.wait_dag_parsed(DAG_ID, watchers=[WATCHER], timeout=120)
        cluster.wait_watchers_running([WATCHER], timeout=90)
        yield Env(cluster, landing)


def land(env: Env, versions: list[int]) -> None:
    generate_dataset({"root": str(env.root), "versions": versions, "rows": 200, "seed": 7})


def covered_versions(env: Env) -> dict[str, list[str]]:
    """DAG run id -> the dataset versions of the asset events it consumed."""
    by_run = env.cluster.dag_run_asset_events(DAG_ID)
    return {
        run: sorted(str((e["extra"] or {}).get("payload", {}).get("version")) for e in events)
        for run, events in by_run.items()
    }


def finished_runs(env: Env) -> list[dict[str, Any]]:
    return [r for r in env.cluster.dag_runs(DAG_ID) if r["state"] in ("success", "failed")]


def test_a_new_version_starts_the_example_dag_by_itself(env: Env, mlflow_client: Any):
    landed = time.time()
    land(env, [1])
    runs = env.cluster.wait_for(
        lambda: finished_runs(env) or None, timeout=120, what="a finished run of the example DAG"
    )
    (run,) = runs
    assert run["state"] == "success", env.cluster.task_instances(DAG_ID, run["run_id"])
    assert run["run_type"] == "asset_triggered"
    assert covered_versions(env) == {run["run_id"]: ["0001"]}
    created = run["queued_at"].timestamp() - landed
    print(f"\nversion landed -> DAG run created: {created:.2f} s")
    assert created < 30
    experiment = mlflow_client.get_experiment_by_name(DAG_ID)
    (parent,) = mlflow_client.search_runs(
        [experiment.experiment_id],
        f"tags.`airflow.run_id` = '{run['run_id']}' and tags.`airflow.role` = 'dag_run'",
    )
    assert parent.data.tags["dataset.churn.version"] == "0001"
    assert parent.data.tags["dataset.churn.uri"].endswith("/churn/version=0001")
    (task,) = mlflow_client.search_runs(
        [experiment.experiment_id],
        f"tags.`airflow.run_id` = '{run['run_id']}' and tags.`airflow.role` = 'task'",
    )
    assert task.data.metrics["rows"] == 200.0  # it read the version the event named
