"""The AirflowCluster harness against a real cluster: an asset watcher (FileDeleteTrigger) triggers a DAG."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.cluster import AirflowCluster
from support.harness import DATABASE_URL_ENV, postgres_base_url

pytestmark = pytest.mark.slow

DAG_ID = "landing_watcher_dag"
WATCHER = "landing_watcher"

DAG_FILE = """
from airflow.providers.standard.triggers.file import FileDeleteTrigger
from airflow.sdk import DAG, Asset, AssetWatcher, task

LANDING = {landing!r}
MARKERS = {markers!r}

landing = Asset(
    "landing",
    uri="file://" + LANDING,
    watchers=[
        AssetWatcher(name={watcher!r}, trigger=FileDeleteTrigger(filepath=LANDING, poke_interval=1))
    ],
)

with DAG(dag_id={dag_id!r}, schedule=[landing], catchup=False, tags=["cluster-harness"]):

    @task
    def write_marker(**context):
        import os

        os.makedirs(MARKERS, exist_ok=True)
        with open(os.path.join(MARKERS, context["run_id"].replace(":", "_") + ".txt"), "w") as f:
            f.write(context["run_id"])

    write_marker()
"""


class Env:
    def __init__(self, cluster: AirflowCluster, landing: Path, markers: Path) -> None:
        self.cluster, self.landing, self.markers = cluster, landing, markers


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if not postgres_base_url():
        pytest.skip(f"{DATABASE_URL_ENV} is not set: the cluster needs a PostgreSQL metadata DB")
    root = tmp_path_factory.mktemp("cluster")
    dags, landing, markers = root / "dags", root / "landing.csv", root / "markers"
    dags.mkdir()
    (dags / "landing_watcher_dag.py").write_text(
        textwrap.dedent(DAG_FILE).format(
            landing=str(landing), markers=str(markers), watcher=WATCHER, dag_id=DAG_ID
        )
    )
    with AirflowCluster(root / "cluster", dags) as cluster:
        cluster.start()
        print(f"\ncomponent start-up seconds: {_fmt(cluster.startup_seconds)}")
        cluster.wait_dag_parsed(DAG_ID, watchers=[WATCHER], timeout=90)
        cluster.wait_watchers_running([WATCHER], timeout=60)
        yield Env(cluster, landing, markers)


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.2f}" for k, v in values.items())


def drop_file_and_wait_run(env: Env, timeout: float = 60) -> dict[str, Any]:
    """Create the landing file; wait for the next DAG run to succeed; return the run and latencies."""
    cluster = env.cluster
    before = {r["run_id"] for r in cluster.dag_runs(DAG_ID)}
    tmp = env.landing.with_suffix(".tmp")
    tmp.write_text("a,b\n1,2\n")
    created = datetime.now(UTC)
    tmp.rename(env.landing)  # atomic: the trigger never sees a partial file

    def new_run() -> dict[str, Any] | None:
        runs = [r for r in cluster.dag_runs(DAG_ID) if r["run_id"] not in before]
        return runs[0] if runs else None

    run = cluster.wait_for(new_run, timeout, what="a DAG run triggered by the landing file")
    run_id = run["run_id"]

    def finished() -> dict[str, Any] | None:
        done = ("success", "failed")
        return next(
            (r for r in cluster.dag_runs(DAG_ID) if r["run_id"] == run_id and r["state"] in done), None
        )

    run = cluster.wait_for(finished, timeout, what=f"DAG run {run_id} to finish")
    tis = cluster.task_instances(DAG_ID, run["run_id"])
    assert run["state"] == "success", (run, tis, cluster.tails())
    assert [t["state"] for t in tis] == ["success"], tis
    assert run["run_type"] == "asset_triggered", run
    assert not env.landing.exists(), "FileDeleteTrigger deletes the file it fired on"
    assert (env.markers / (run["run_id"].replace(":", "_") + ".txt")).read_text() == run["run_id"]
    consumed = cluster.dag_run_asset_events(DAG_ID)[run["run_id"]]
    assert [e["asset_name"] for e in consumed] == ["landing"], consumed
    event = consumed[0]

    def secs(t: datetime) -> float:
        return (t - created).total_seconds()

    latency = {
        "asset_event": secs(event["timestamp"]),
        "run_queued_at": secs(run["queued_at"]),
        "run_start_date": secs(run["start_date"]),
        "task_start_date": secs(tis[0]["start_date"]),
        "task_end_date": secs(tis[0]["end_date"]),
        "run_end_date": secs(run["end_date"]),
    }
    print(f"\nlatency from file creation (s): {_fmt(latency)}")
    return {"run": run, "latency": latency, "event": event}


def test_file_landing_triggers_dag_run(env: Env) -> None:
    triggers = env.cluster.watcher_triggers("landing")
    assert [t["classpath"] for t in triggers] == [
        "airflow.providers.standard.triggers.file.FileDeleteTrigger"
    ], triggers
    assert triggers[0]["triggerer_id"] is not None
    result = drop_file_and_wait_run(env)
    assert len(env.cluster.asset_events("landing")) >= 1
    assert result["latency"]["task_start_date"] > 0


def test_file_landing_after_triggerer_restart(env: Env) -> None:
    cluster = env.cluster
    runs_before = len(cluster.dag_runs(DAG_ID))
    old = {t["triggerer_id"] for t in cluster.watcher_triggers("landing")}
    cluster.restart_component("triggerer")
    print(f"\ntriggerer restart-up seconds: {cluster.startup_seconds['triggerer']:.2f}")
    rows = cluster.wait_watchers_running([WATCHER], timeout=60)
    assert {r["triggerer_id"] for r in rows}.isdisjoint(old), (rows, old)
    result = drop_file_and_wait_run(env)
    assert len(cluster.dag_runs(DAG_ID)) == runs_before + 1
    assert result["run"]["state"] == "success"
