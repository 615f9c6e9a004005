"""
What the Models page reads and shows, against the session's real mlflow server: the models the
provider promoted, one model's champion timeline, rollbacks and key metrics across versions, the
access rule per DAG, escaping, and a 502 with MLflow down. The same page on a real api-server and
in a browser: tests/integration/test_lineage_ui.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.integration

HOSTILE = "<img src=x onerror=alert(1)>"
REASON = f"live auc 0.41 < 0.6 for 3 checks {HOSTILE}"


@pytest.fixture(scope="module")
def hook(mlflow_server: Any) -> Iterator[Any]:
    from airflow_ml_provider.hooks.mlflow import MlflowHook

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", mlflow_server.connection_json())
        yield MlflowHook()


def _version(hook: Any, name: str, n: int, dag_id: str, metrics: dict[str, float], **tags: str) -> str:
    """A version registered as PromoteModelOperator registers one: with its lineage tags."""
    lineage = {
        "airflow_ml.dag_id": dag_id,
        "airflow_ml.dag_run": f"manual__run{n}",
        "airflow_ml.dataset_version": f"000{n}",
        **{f"airflow_ml.metric.{k}": f"{v:.6g}" for k, v in metrics.items()},
        **tags,
    }
    version, _ = hook.register_version(
        name, f"s3://bucket/{name}/{n}", registration_key=f"k{n}", tags=lineage
    )
    return str(version.version)


def _promote(hook: Any, name: str, version: str, expected: str | None, dag_id: str, n: int) -> None:
    from airflow_ml_provider.hooks._registry import MoveRecord

    record = MoveRecord(dag_id=dag_id, run_id=f"manual__run{n}", task_id="promote", dataset_version=f"000{n}")
    hook.move_alias(name, version, expected=expected, owner=f"ti/{name}/{n}", record=record)


@pytest.fixture(scope="module")
def promoted(hook: Any) -> dict[str, str]:
    """Model HOSTILE-<id> of DAG "train_dag": v1 and v2 promoted, v2 rolled back; "other_dag"'s model: v1."""
    from airflow_ml_provider.hooks._registry import MoveRecord

    name = f"{HOSTILE} {uuid.uuid4().hex[:6]}"
    v1 = _version(hook, name, 1, "train_dag", {"auc": 0.81, "f1 score": 0.7})
    _promote(hook, name, v1, None, "train_dag", 1)
    v2 = _version(hook, name, 2, "train_dag", {"auc": 0.84, "f1 score": 0.75})
    _promote(hook, name, v2, v1, "train_dag", 2)
    hook.rollback_alias(name, expected=v2, record=MoveRecord(reason=REASON, dag_id="guard_dag", run_id="r9"))
    other = f"other_{uuid.uuid4().hex[:6]}"
    _promote(hook, other, _version(hook, other, 1, "other_dag", {"auc": 0.7}), None, "other_dag", 1)
    return {"name": name, "other": other}


def test_a_model_shows_its_champion_timeline_rollback_and_metrics_across_versions(hook, promoted):
    from airflow_ml_provider.plugins.models_data import model_detail

    model = model_detail(hook, promoted["name"], lambda dag: True)
    assert model["champion"] == "1" and model["champion_row"]["version"] == "1"
    assert [(h["kind"], h["from_version"], h["to_version"]) for h in model["history"]] == [
        ("rollback", "2", "1"),
        ("promotion", "1", "2"),
        ("promotion", None, "1"),
    ]
    [rollback] = model["rollbacks"]
    assert rollback["reason"] == REASON and rollback["dag_id"] == "guard_dag"
    v2, v1 = model["versions"]
    assert (v1["version"], v1["dataset_version"], v1["metrics"]["auc"]) == ("1", "0001", 0.81)
    assert v1["aliases"] == ["champion"] and v2["aliases"] == ["previous_champion"]
    assert v2["rolled_back_at"] and v2["champion_seconds"] is not None  # it held the alias
    assert (v2["dag_id"], v2["run_id"]) == ("train_dag", "manual__run2")
    assert v1["mlflow_url"] == f"{model['mlflow_url']}/versions/1"
    assert "%3Cimg" in model["mlflow_url"]  # the name is quoted in the address
    # Trend plots: one per key metric, points in version order, drawn by status.
    auc = next(c for c in model["trends"] if c["metric"] == "auc")
    assert [(p["version"], p["value"], p["status"]) for p in auc["points"]] == [
        ("1", 0.81, "champion"),
        ("2", 0.84, "rolled_back"),
    ]
    assert auc["points"][0]["y"] > auc["points"][1]["y"]  # a higher value is drawn higher
    timeline = model["timeline"]
    assert [lane["version"] for lane in timeline["lanes"]] == ["2", "1"]
    assert len(timeline["bars"]) == 3 and timeline["bars"][-1]["current"]
    assert [m["kind"] for m in timeline["markers"]] == ["rollback"]
    json.dumps(model, default=str)  # the JSON route's content


def test_the_list_shows_only_models_whose_dags_the_viewer_may_read(hook, promoted):
    from airflow_ml_provider.plugins.models_data import ModelHidden, list_models, model_detail

    everything = {m["name"]: m for m in list_models(hook, lambda dag: True)["models"]}
    mine = everything[promoted["name"]]
    assert (mine["champion"], mine["versions"], mine["rollbacks"], mine["last_move"]) == (
        "1",
        2,
        1,
        "rollback",
    )
    assert mine["dag_ids"] == ["train_dag"] and mine["metrics"]["auc"] == 0.81
    assert promoted["other"] in everything

    outsider = {m["name"] for m in list_models(hook, lambda dag: dag == "other_dag")["models"]}
    assert promoted["other"] in outsider and promoted["name"] not in outsider
    with pytest.raises(ModelHidden):
        model_detail(hook, promoted["name"], lambda dag: dag == "other_dag")
    # Reading the producing DAG is not enough when another DAG (the guard's) moved the champion.
    with pytest.raises(ModelHidden):
        model_detail(hook, promoted["name"], lambda dag: dag == "train_dag")


@pytest.fixture
def models_app(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The Models app in process, with Airflow's user and access check stubbed ("outsider" reads other_dag)."""
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.testclient import TestClient

    from airflow_ml_provider.plugins import models_app as module

    viewer = {"name": "admin"}
    monkeypatch.setattr(
        module, "dag_reader", lambda user: lambda dag: viewer["name"] == "admin" or dag == "other_dag"
    )
    app = module.create_app()
    app.dependency_overrides[get_user] = lambda: viewer
    client = TestClient(app, root_path="/ml-models")
    client.viewer = viewer  # type: ignore[attr-defined]
    return client


def test_the_pages_escape_names_and_reasons(models_app, promoted):
    from urllib.parse import quote

    from airflow_ml_provider.plugins.ui_common import OPEN_LINKS_SCRIPT

    listing = models_app.get("/models")
    assert listing.status_code == 200 and HOSTILE not in listing.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in listing.text
    page = models_app.get(f"/models/{quote(promoted['name'], safe='')}")
    assert page.status_code == 200, page.text
    assert HOSTILE not in page.text
    assert "live auc 0.41 &lt; 0.6 for 3 checks &lt;img src=x onerror=alert(1)&gt;" in page.text
    assert page.text.count("<script") == 1 and OPEN_LINKS_SCRIPT in page.text
    assert "script-src 'sha256-" in page.headers["content-security-policy"]
    assert "<svg" in page.text and "<polyline" in page.text  # the charts, drawn on the server
    # The lineage link opens the DAG run's tab in the Airflow UI (the app is mounted under its root).
    assert 'class="top" href="/dags/train_dag/runs/manual__run2/plugin/ml-lineage"' in page.text


def test_403_for_a_viewer_who_may_not_read_the_dags_and_404_for_an_unknown_model(models_app, promoted):
    from urllib.parse import quote

    models_app.viewer["name"] = "outsider"
    for route in ("/models/", "/api/models/"):
        answer = models_app.get(route + quote(promoted["name"], safe=""))
        assert answer.status_code == 403, answer.text
        assert "auc" not in answer.text and "0001" not in answer.text
    assert models_app.get(f"/api/models/{promoted['other']}").status_code == 200
    assert promoted["name"] not in models_app.get("/api/models").text
    assert models_app.get("/models/no-such-model").status_code == 404


def test_with_mlflow_down_every_route_answers_502_naming_the_server_without_its_password(
    models_app, monkeypatch
):
    canary = f"canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DEFAULT",
        json.dumps({"conn_type": "mlflow", "host": f"http://u:{canary}@127.0.0.1:9"}),
    )
    for route in ("/models", "/api/models", "/models/m", "/api/models/m"):
        answer = models_app.get(route)
        assert answer.status_code == 502, (route, answer.text)
        assert "127.0.0.1:9" in answer.text and canary not in answer.text, route
