"""
What the ML lineage view reads and shows, against the session's real mlflow server: a report's
size is checked before it is fetched, a run's artifact location is not an address to fetch, a
stage reused from another DAG's run shows nothing of it to a viewer who may not read that DAG, and
with MLflow down the routes answer 502. The same view on a real api-server:
tests/integration/test_lineage_ui.py.
"""

from __future__ import annotations

import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

MB = 1024 * 1024


@pytest.fixture
def hook(mlflow_conn: Any) -> Any:
    from airflow_ml_provider.hooks.mlflow import MlflowHook

    return MlflowHook()


def _task_run(client: Any, experiment_id: str, dag_id: str, run_id: str, **tags: str) -> Any:
    base = {"airflow.dag_id": dag_id, "airflow.run_id": run_id, "airflow.role": "task"}
    return client.create_run(experiment_id, tags={**base, **tags})


@pytest.fixture
def requests_sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every HTTP request this process sends: ``"METHOD url"``."""
    import requests

    sent: list[str] = []
    send = requests.Session.send

    def spy(self: Any, request: Any, **kwargs: Any) -> Any:
        sent.append(f"{request.method} {request.url}")
        return send(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", spy)
    return sent


def test_a_report_over_20_mb_is_refused_before_any_of_it_is_fetched(
    hook, mlflow_client, tmp_path, requests_sent, monkeypatch
):
    from airflow_ml_provider.plugins import lineage_artifacts
    from airflow_ml_provider.plugins.lineage_artifacts import ArtifactTooLarge
    from airflow_ml_provider.plugins.lineage_data import read_artifact

    experiment = mlflow_client.create_experiment(f"lineage-size-{uuid.uuid4().hex[:8]}")
    run = _task_run(mlflow_client, experiment, "d", "r")
    folder = tmp_path / "evaluation"
    folder.mkdir()
    (folder / "big.json").write_bytes(b" " * (25 * MB))
    (folder / "small.json").write_text('{"ok": true}')
    mlflow_client.log_artifacts(run.info.run_id, str(folder), "evaluation")
    run = mlflow_client.get_run(run.info.run_id)
    requests_sent.clear()

    with pytest.raises(ArtifactTooLarge, match="26,214,400 bytes"):
        read_artifact(hook, run, "evaluation/big.json")
    assert not [r for r in requests_sent if "big.json" in r], requests_sent  # listed, never fetched
    assert read_artifact(hook, run, "evaluation/small.json") == (b'{"ok": true}', "application/json")

    # A file bigger than listed (written meanwhile): the download stops at the cap.
    monkeypatch.setattr(lineage_artifacts, "MAX_ARTIFACT_BYTES", 5)
    monkeypatch.setattr(
        lineage_artifacts.RunArtifacts, "sizes", lambda self, folder: {f"{folder}/small.json": 1}
    )
    with pytest.raises(ArtifactTooLarge):
        read_artifact(hook, run, "evaluation/small.json")


@pytest.fixture
def listener() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that answers anything with a secret, and records what it was asked."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = b'{"files": [{"path": "report.html", "is_dir": false, "file_size": 6}]}'
            if self.path.endswith(".html"):
                body = b"SECRET"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", asked
    finally:
        server.shutdown()


def test_a_run_whose_artifacts_are_elsewhere_is_refused_unless_its_root_is_allowed(
    hook, mlflow_client, tmp_path, listener, monkeypatch
):
    """The api-server fetches nothing a run's artifact location names, unless configured to."""
    from mlflow.exceptions import MlflowException

    from airflow_ml_provider.plugins.lineage_artifacts import ArtifactRefused
    from airflow_ml_provider.plugins.lineage_data import read_artifact

    outside = tmp_path / "outside"
    secret = outside / "evaluation" / "report.html"
    secret.parent.mkdir(parents=True)
    secret.write_text("SECRET from the api-server's disk")
    name = f"lineage-where-{uuid.uuid4().hex[:8]}"
    local = mlflow_client.create_experiment(name, artifact_location=outside.as_uri())
    # The run's own location: what MLflow reports for it (the experiment's location + run id).
    run = mlflow_client.get_run(_task_run(mlflow_client, local, "d", "r").info.run_id)
    (Path(run.info.artifact_uri.removeprefix("file://")) / "evaluation").mkdir(parents=True)
    (Path(run.info.artifact_uri.removeprefix("file://")) / "evaluation" / "report.html").write_text("SECRET")
    with pytest.raises(ArtifactRefused, match="does not read"):
        read_artifact(hook, run, "evaluation/report.html")

    monkeypatch.setenv("AIRFLOW__ML_PROVIDER__LINEAGE_ARTIFACT_ROOTS", f"/nowhere, {outside}")
    assert read_artifact(hook, run, "evaluation/report.html") == (b"SECRET", "text/html; charset=utf-8")
    monkeypatch.setenv("AIRFLOW__ML_PROVIDER__LINEAGE_ARTIFACT_ROOTS", f"{outside}-sibling")
    with pytest.raises(ArtifactRefused):
        read_artifact(hook, run, "evaluation/report.html")

    # A remote location: MLflow 3.17's server refuses to create it; an older one would not.
    base, asked = listener
    try:
        remote = mlflow_client.create_experiment(f"{name}-http", artifact_location=f"{base}/x")
    except MlflowException:
        remote = None
    if remote is not None:
        remote_run = mlflow_client.get_run(_task_run(mlflow_client, remote, "d", "r").info.run_id)
    else:  # the run an older server would have stored, as the view reads it
        from types import SimpleNamespace

        remote_run = SimpleNamespace(info=SimpleNamespace(run_id=run.info.run_id, artifact_uri=f"{base}/x/1"))
    for uri in (f"{base}/x/1", f"mlflow-artifacts://127.0.0.1:{base.rsplit(':', 1)[1]}/x/1"):
        remote_run.info.artifact_uri = uri  # type: ignore[misc]
        with pytest.raises(ArtifactRefused):
            read_artifact(hook, remote_run, "evaluation/report.html")
    assert asked == []


def test_a_stage_reused_from_another_dags_run_shows_nothing_of_it_to_who_may_not_read_that_dag(
    hook, mlflow_client, tmp_path, mlflow_server
):
    from airflow_ml_provider.plugins.lineage_app import OPEN_LINKS_SCRIPT, _environment
    from airflow_ml_provider.plugins.lineage_data import collect_lineage

    experiment = mlflow_client.create_experiment(f"lineage-cache-{uuid.uuid4().hex[:8]}")
    source = _task_run(mlflow_client, experiment, "private_dag", "r0", **{"airflow_ml.step": "validate_data"})
    anomalies = {"anomalyInfo": {"salary_of_the_ceo": {"reason": [{"type": "X", "description": "PRIVATE"}]}}}
    (tmp_path / "anomalies.json").write_text(json.dumps(anomalies))
    mlflow_client.log_artifact(source.info.run_id, str(tmp_path / "anomalies.json"), "validation")
    mlflow_client.set_terminated(source.info.run_id)
    hit = _task_run(
        mlflow_client,
        experiment,
        "mine",
        "r1",
        **{
            "airflow.task_id": "validate",
            "airflow_ml.step": "validate_data",
            "airflow_ml.cache_hit": "true",
            "airflow_ml.cache_source_run_id": source.info.run_id,
            "airflow_ml.cache_source_url": "https://phish.example/login",
        },
    )
    mlflow_client.set_terminated(hit.info.run_id)

    hidden = collect_lineage(hook, "mine", "r1", [experiment], may_read_dag=lambda dag: dag != "private_dag")
    [stage] = hidden["stages"]
    assert stage["cache_hit"] and stage["cache_source_hidden"]
    assert stage["details"]["anomalies"] == [] and stage["cache_source_url"] is None
    page = (
        _environment()
        .get_template("ml_lineage.html")
        .render(lineage=hidden, dag_id="mine", run_id="r1", task_id=None, open_links_script=OPEN_LINKS_SCRIPT)
    )
    assert "a DAG you may not read" in page
    for shown in (json.dumps(hidden), page):
        assert "PRIVATE" not in shown and "salary_of_the_ceo" not in shown and "phish.example" not in shown

    shown = collect_lineage(hook, "mine", "r1", [experiment], may_read_dag=lambda dag: True)
    [stage] = shown["stages"]
    assert stage["details"]["anomalies"][0]["description"] == "PRIVATE"
    # The link to the source run is built from the configured MLflow UI, never taken from the tag.
    assert (
        stage["cache_source_url"]
        == f"{mlflow_server.url}/#/experiments/{experiment}/runs/{source.info.run_id}"
    )


@pytest.fixture
def lineage_app(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The plugin's FastAPI app in process, with Airflow's access check and DAG run lookup stubbed."""
    from airflow.api_fastapi.common.db.common import _get_session
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.testclient import TestClient

    from airflow_ml_provider.plugins import lineage_app as module

    monkeypatch.setattr(module, "requires_access_dag", lambda *args: lambda: None)
    monkeypatch.setattr(module, "_require_dag_run", lambda session, dag_id, run_id: None)
    monkeypatch.setattr(module, "_experiment_ids", lambda session, dag_id, run_id: {"1"})
    app = module.create_app()
    app.dependency_overrides[_get_session] = lambda: None
    app.dependency_overrides[get_user] = lambda: None
    return TestClient(app)


def test_with_mlflow_down_every_route_answers_502_naming_the_server_without_its_password(
    lineage_app, monkeypatch
):
    canary = f"canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DEFAULT",
        json.dumps({"conn_type": "mlflow", "host": f"http://u:{canary}@127.0.0.1:9"}),
    )
    run = {"dag_id": "d", "run_id": "r"}
    report = {**run, "mlflow_run_id": "0" * 32, "path": "evaluation/report.html"}
    for route, params in (("/artifact", report), ("/api/lineage", run), ("/lineage", run)):
        answer = lineage_app.get(route, params=params)
        assert answer.status_code == 502, (route, answer.text)
        assert "127.0.0.1:9" in answer.text and canary not in answer.text, route
