"""MlflowHook against real mlflow servers: connection tests, auth, claims, batching, races."""

from __future__ import annotations

import json
import logging
import multiprocessing
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.harness import AUTH_ADMIN_PASSWORD, postgres_base_url, start_task_runs_in_process

from airflow_ml_provider.exceptions import MlflowConnectionError
from airflow_ml_provider.hooks.mlflow import MlflowHook

pytestmark = pytest.mark.integration


def _hook(monkeypatch: pytest.MonkeyPatch, **fields: object) -> MlflowHook:
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_IT", json.dumps({"conn_type": "mlflow", **fields}))
    return MlflowHook("mlflow_it")


def test_connection_to_a_real_server(monkeypatch, mlflow_server):
    ok, message = _hook(monkeypatch, host=mlflow_server.url).test_connection()
    assert ok, message
    assert mlflow_server.url in message


def test_unreachable_server_fails_fast_naming_the_uri(monkeypatch):
    from support.harness import free_port

    url = f"http://127.0.0.1:{free_port()}"
    hook = _hook(monkeypatch, host=url, password="tok-secret-1", extra={"request_timeout": 2})
    ok, message = hook.test_connection()
    assert not ok
    assert url in message and "unreachable" in message
    assert "tok-secret-1" not in message
    with pytest.raises(MlflowConnectionError, match="unreachable"):
        hook.check_server()


@pytest.mark.parametrize(
    "fields",
    [
        {"password": "wrong-token-xyz"},
        {"login": "admin", "password": "wrong-token-xyz"},
    ],
    ids=["bearer", "basic"],
)
def test_wrong_credentials_fail_without_leaking_them(monkeypatch, mlflow_auth_server, caplog, fields):
    hook = _hook(monkeypatch, host=mlflow_auth_server.url, **fields)
    with caplog.at_level(logging.DEBUG):
        ok, message = hook.test_connection()
    assert not ok
    assert mlflow_auth_server.url in message and "refused the credentials" in message
    assert "wrong-token-xyz" not in message
    assert "wrong-token-xyz" not in caplog.text


def test_right_credentials_work_without_environment_variables(monkeypatch, mlflow_auth_server):
    import os

    hook = _hook(monkeypatch, host=mlflow_auth_server.url, login="admin", password=AUTH_ADMIN_PASSWORD)
    assert hook.test_connection()[0]
    experiment_id = hook.get_or_create_experiment(f"auth-{uuid.uuid4().hex[:6]}")
    run = hook.client.create_run(experiment_id)
    hook.log_batch(run.info.run_id, metrics={"x": 1.0})
    assert hook.client.get_run(run.info.run_id).data.metrics == {"x": 1.0}
    # No credential in the environment. (MLFLOW_TRACKING_URI may be there: mlflow.set_tracking_uri,
    # which an in-process step of an earlier test in this process may have called, sets it.)
    credentials = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
    assert not any(k in os.environ for k in credentials)
    assert AUTH_ADMIN_PASSWORD not in os.environ.values()


def test_get_or_create_experiment_is_race_safe(monkeypatch, mlflow_server):
    hook = _hook(monkeypatch, host=mlflow_server.url)
    name = f"race-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: MlflowHook("mlflow_it").get_or_create_experiment(name), range(8)))
    assert len(ids) == 1
    assert hook.get_or_create_experiment(name) in ids


def test_claim_binds_the_first_value(monkeypatch, mlflow_server):
    hook = _hook(monkeypatch, host=mlflow_server.url)
    key = f"k-{uuid.uuid4().hex}"
    assert hook.read_claim(key) is None
    with ThreadPoolExecutor(8) as pool:
        winners = set(pool.map(lambda i: MlflowHook("mlflow_it").claim(key, f"v{i}"), range(8)))
    assert len(winners) == 1
    assert hook.read_claim(key) in winners
    # The claim stays out of the experiment list.
    assert not [e for e in hook.client.search_experiments() if e.name.startswith(".airflow-ml-provider")]


def test_log_batch_respects_mlflow_limits(monkeypatch, mlflow_server):
    hook = _hook(monkeypatch, host=mlflow_server.url)
    run = hook.client.create_run(hook.get_or_create_experiment("batching"))
    metrics = [(f"m{i % 7}", float(i), i) for i in range(2500)]
    params = {f"p{i}": i for i in range(150)}
    requests_made = hook.log_batch(run.info.run_id, metrics=metrics, params=params, tags={"t": "1"})
    assert requests_made == 3
    history = hook.client.get_metric_history(run.info.run_id, "m0")
    assert len(history) == len([m for m in metrics if m[0] == "m0"])
    assert len(hook.client.get_run(run.info.run_id).data.params) == 150


def test_embedded_sqlite_store(monkeypatch, tmp_path: Path):
    hook = _hook(
        monkeypatch,
        host=f"sqlite:///{tmp_path}/mlflow.db",
        extra={"artifact_location": str(tmp_path / "art")},
    )
    ok, message = hook.test_connection()
    assert ok, message
    experiment_id = hook.get_or_create_experiment("embedded")
    assert hook.client.get_experiment(experiment_id).artifact_location.startswith(str(tmp_path / "art"))


@pytest.mark.slow
def test_parallel_mapped_tasks_share_one_parent_run_on_postgres(mlflow_server, mlflow_client):
    """Real processes released together by a barrier, against a PostgreSQL-backed server."""
    if not postgres_base_url():
        pytest.skip("needs ML_PROVIDER_TEST_DATABASE_URL (the mlflow server's PostgreSQL backend)")
    from mlflow.entities import ViewType

    ctx = multiprocessing.get_context("spawn")
    processes, rounds = 6, 5
    dag_id = f"race_{uuid.uuid4().hex[:8]}"
    run_ids = [f"manual__race_{n}" for n in range(rounds)]
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(
            target=start_task_runs_in_process,
            args=(barrier, mlflow_server.connection_json(), dag_id, run_ids, i, out),
        )
        for i in range(processes)
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=300) for _ in range(processes * rounds)]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    experiment = mlflow_client.get_experiment_by_name(dag_id)
    candidates = 0
    for run_id in run_ids:
        parents = {parent for rid, _, parent, _ in results if rid == run_id}
        assert len(parents) == 1, f"{run_id}: {len(parents)} parent runs"
        flt = f"tags.`airflow.run_id` = '{run_id}' and tags.`airflow.role` = 'dag_run'"
        active = mlflow_client.search_runs([experiment.experiment_id], flt)
        assert [r.info.run_id for r in active] == list(parents)
        candidates += len(mlflow_client.search_runs([experiment.experiment_id], flt, ViewType.ALL))
        assert len({task for rid, _, _, task in results if rid == run_id}) == processes
    # The race really happened: some DAG runs got (and discarded) more than one candidate parent.
    assert candidates > rounds


def test_artifact_downloads_draw_no_progress_bar_on_stderr(monkeypatch, mlflow_conn, tmp_path: Path, capfd):
    """A task log records stderr at level ERROR: a clean promotion copying a baseline logs none."""
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    hook = MlflowHook()
    run = hook.client.create_run(hook.get_or_create_experiment("progress-bars"))
    (tmp_path / "a.json").write_text("{}")
    hook.client.log_artifact(run.info.run_id, str(tmp_path / "a.json"), "out")
    capfd.readouterr()
    hook.client.download_artifacts(run.info.run_id, "out/a.json", str(tmp_path))
    assert "Downloading artifacts" not in capfd.readouterr().err
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")  # asked for: drawn
    hook.client.download_artifacts(run.info.run_id, "out/a.json", str(tmp_path / "again"))
    assert "Downloading artifacts" in capfd.readouterr().err
