"""
MLflow goes down in the middle of a task: the task gives up in seconds (not MLflow's default of
about four minutes), naming the server; Airflow retries it once the server is back, and the retry
completes in the same MLflow run, with what the first try logged before the outage still there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import steps_for_tests
from support.harness import MlflowServer, load_dag, run_dag, task_states

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
    """A server of this test's own (the test stops it), on one port and store across restarts."""
    server = MlflowServer(tmp_path / "mlflow", workers=1).start()
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", server.connection_json())
    monkeypatch.setitem(steps_for_tests.OUTAGE, "server", server)
    try:
        yield server
    finally:
        server.stop()


def test_a_task_gives_up_on_a_dead_server_quickly_and_its_retry_loses_nothing(
    airflow_db, server: MlflowServer, tmp_path: Path, capfd: pytest.CaptureFixture[str], record_property
) -> None:
    from mlflow.tracking import MlflowClient

    dag_run = run_dag(load_dag("test_tracking_outage"), conf={"marker": str(tmp_path / "stopped")})
    output = capfd.readouterr()
    text = output.out + output.err

    assert task_states(dag_run) == {"through_outage": "success"}
    gave_up = steps_for_tests.OUTAGE["failed_at"] - steps_for_tests.OUTAGE["stopped_at"]
    print(f"\nMLflow down -> task failed and up for retry: {gave_up:.1f} s")
    assert gave_up < 90, f"the task took {gave_up:.0f} s to give up on the dead server"
    failures = [line for line in text.splitlines() if "MlflowException: API request to" in line]
    assert failures and all(f"API request to {server.url}/" in line for line in failures), failures[:3]

    client = MlflowClient(tracking_uri=server.url)
    experiment = client.get_experiment_by_name("test_tracking_outage")
    runs = client.search_runs([experiment.experiment_id], f"tags.`airflow.run_id` = '{dag_run.run_id}'")
    task_runs = [r for r in runs if r.data.tags.get("airflow.role") == "task"]
    assert len(runs) == 2 and len(task_runs) == 1  # one parent run, one task run: no duplicate
    (run,) = task_runs
    assert run.info.status == "FINISHED"
    assert run.data.tags["airflow.try_number"] == "2"  # the retry resumed the first try's run
    assert run.data.params["step"] == "steps_for_tests:stop_mlflow_once"  # logged before the outage
    assert "step/spec.json" in {a.path for a in client.list_artifacts(run.info.run_id, "step")}
    assert run.data.metrics["after_outage"] == 1.0
    record_property(
        "measured",
        f"gave up {gave_up:.0f} s after the server stopped (MLflow's default: about 4 min per call), "
        "naming it; after the retry: 1 parent run, 1 task run (try 2 in it), try 1's params and spec kept",
    )
