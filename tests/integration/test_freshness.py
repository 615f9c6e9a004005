"""Freshness figures reach the MLflow parent run and Airflow's metrics (a real StatsD datagram)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from support.dataset_fixtures import land
from support.harness import load_dag, run_dag

pytestmark = pytest.mark.integration


@pytest.fixture
def statsd(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A UDP socket as the StatsD server, and Airflow's task metrics pointed at it (as the task
    runner sets them up in a worker; ``dag.test()`` runs tasks in this process)."""
    from airflow.sdk._shared.observability.metrics import stats
    from airflow.sdk.observability.metrics import stats_utils

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    for key, value in {
        "STATSD_ON": "True",
        "STATSD_HOST": "127.0.0.1",
        "STATSD_PORT": str(server.getsockname()[1]),
        "STATSD_PREFIX": "airflow",
    }.items():
        monkeypatch.setenv(f"AIRFLOW__METRICS__{key}", value)
    stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=False)
    try:
        yield server
    finally:
        stats.initialize(factory=stats.NoStatsLogger, export_legacy_names=False)
        server.close()


def _datagrams(server: socket.socket) -> list[str]:
    received = []
    try:
        while True:
            received.append(server.recv(65536).decode())
            server.settimeout(0.5)
    except TimeoutError:
        return received


def test_run_started_reaches_the_parent_run_and_statsd(airflow_db, mlflow_conn, mlflow_client, statsd):
    experiment = f"freshness_{uuid.uuid4().hex[:8]}"
    completed = datetime.now(UTC) - timedelta(seconds=30)
    conf = {
        "experiment": experiment,
        "dataset_version": {"version": "0007", "uri": "/data/v7", "completed_at": completed.isoformat()},
    }
    dag_run = run_dag(load_dag("freshness_probe"), conf=conf)
    (parent,) = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name(experiment).experiment_id],
        f"tags.`airflow.run_id` = '{dag_run.run_id}' and tags.`airflow.role` = 'dag_run'",
    )
    seconds = parent.data.metrics["freshness.version_to_run_started_seconds"]
    assert 30 <= seconds < 300
    timers = [d for d in _datagrams(statsd) if "ml_provider.freshness.version_to_run_started" in d]
    assert timers, "no freshness timer reached StatsD"
    assert timers[0].startswith("airflow.ml_provider.freshness.version_to_run_started:") and timers[
        0
    ].endswith("|ms")


def test_a_conf_version_without_completed_at_takes_it_from_its_marker(
    airflow_db, mlflow_conn, mlflow_client, tmp_path
):
    folder = land(tmp_path / "churn", "0007")
    completed = (datetime.now(UTC) - timedelta(seconds=30)).timestamp()
    os.utime(folder / "_SUCCESS", (completed, completed))
    experiment = f"freshness_{uuid.uuid4().hex[:8]}"
    conf = {"experiment": experiment, "dataset_version": {"version": "0007", "uri": str(folder)}}
    dag_run = run_dag(load_dag("freshness_probe"), conf=conf)
    (parent,) = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name(experiment).experiment_id],
        f"tags.`airflow.run_id` = '{dag_run.run_id}' and tags.`airflow.role` = 'dag_run'",
    )
    assert 30 <= parent.data.metrics["freshness.version_to_run_started_seconds"] < 300


def test_a_run_no_version_started_records_no_freshness(airflow_db, mlflow_conn, mlflow_client):
    experiment = f"freshness_{uuid.uuid4().hex[:8]}"
    dag_run = run_dag(load_dag("freshness_probe"), conf={"experiment": experiment})
    (parent,) = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name(experiment).experiment_id],
        f"tags.`airflow.run_id` = '{dag_run.run_id}' and tags.`airflow.role` = 'dag_run'",
    )
    assert not [k for k in parent.data.metrics if k.startswith("freshness.")]
