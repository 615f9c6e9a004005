"""How MlflowHook reads its connection (no server needed)."""

from __future__ import annotations

import json

import pytest

from airflow_ml_provider.hooks.mlflow import MlflowHook, redact_text, redact_uri

pytestmark = pytest.mark.unit


def _hook(monkeypatch: pytest.MonkeyPatch, conn_id: str = "mlflow_test", **fields: object) -> MlflowHook:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "mlflow", **fields}))
    return MlflowHook(conn_id)


@pytest.mark.parametrize(
    ("fields", "uri"),
    [
        ({"host": "http://mlflow:5000"}, "http://mlflow:5000"),
        ({"host": "http://mlflow:5000/"}, "http://mlflow:5000"),
        ({"host": "mlflow", "port": 5000}, "http://mlflow:5000"),
        ({"host": "mlflow.example.com", "schema": "https"}, "https://mlflow.example.com"),
        ({"host": "https://mlflow.example.com", "port": 8443}, "https://mlflow.example.com:8443"),
        ({"host": "sqlite:////tmp/x/mlflow.db"}, "sqlite:////tmp/x/mlflow.db"),
    ],
)
def test_tracking_uri_from_connection(monkeypatch, fields, uri):
    assert _hook(monkeypatch, **fields).settings.tracking_uri == uri


def test_login_and_password_are_basic_auth(monkeypatch):
    settings = _hook(monkeypatch, host="http://m:5000", login="alice", password="pw").settings
    assert (settings.username, settings.password, settings.token) == ("alice", "pw", None)
    assert settings.child_environment()["MLFLOW_TRACKING_USERNAME"] == "alice"


def test_password_alone_is_a_bearer_token(monkeypatch):
    settings = _hook(monkeypatch, host="http://m:5000", password="tok-123").settings
    assert (settings.username, settings.password, settings.token) == (None, None, "tok-123")
    assert settings.child_environment()["MLFLOW_TRACKING_TOKEN"] == "tok-123"


def test_secrets_stay_out_of_repr_and_environment(monkeypatch):
    import os

    hook = _hook(monkeypatch, host="http://m:5000", login="alice", password="hunter2")
    assert "hunter2" not in repr(hook.settings)
    assert hook.client is not None  # building the client must not export credentials
    leaked = [k for k, v in os.environ.items() if "hunter2" in v and not k.startswith("AIRFLOW_CONN_")]
    assert leaked == []


def test_extras_are_read_by_name_only(monkeypatch):
    settings = _hook(
        monkeypatch,
        host="http://m:5000",
        extra={
            "registry_uri": "http://registry:5000",
            "ui_url": "https://mlflow.example.com/",
            "insecure_tls": "true",
            "request_timeout": "3",
            "MLFLOW_TRACKING_TOKEN": "must-be-ignored",
        },
    ).settings
    assert settings.registry_uri == "http://registry:5000"
    assert settings.ui_url == "https://mlflow.example.com"
    assert settings.insecure_tls is True
    assert settings.request_timeout == 3.0
    assert settings.token is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"host": ""}, r"Tracking URI \(host\) is empty"),
        ({"host": "file:///tmp/mlruns"}, "refuses the file store"),
        ({"host": "http://m", "extra": {"request_timeout": "soon"}}, "request_timeout"),
    ],
)
def test_bad_connection_names_the_problem(monkeypatch, fields, message):
    with pytest.raises(ValueError, match=message):
        _ = _hook(monkeypatch, **fields).settings


def test_missing_default_connection_falls_back_to_embedded_sqlite(monkeypatch, tmp_path):
    monkeypatch.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    assert MlflowHook().settings.tracking_uri == f"sqlite:///{tmp_path}/mlflow/mlflow.db"


def test_missing_named_connection_is_an_error(monkeypatch):
    from airflow.sdk.exceptions import AirflowNotFoundException

    with pytest.raises(AirflowNotFoundException):
        _ = MlflowHook("no_such_connection").settings


def test_redact_uri_drops_credentials():
    assert redact_uri("http://bob:secret@host:5000/x") == "http://host:5000/x"
    assert redact_uri("http://host:5000") == "http://host:5000"


def test_children_give_up_on_a_dead_server_in_seconds_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", raising=False)
    env = _hook(monkeypatch, host="http://m:5000").settings.child_environment()
    assert (env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"], env["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]) == ("4", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "9")  # the deployment's choice wins
    assert (
        _hook(monkeypatch, host="http://m:5000").settings.child_environment()[
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
        ]
        == "9"
    )
    database = _hook(monkeypatch, host="sqlite:////tmp/x/mlflow.db").settings.child_environment()
    assert "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR" not in database  # no HTTP, nothing to retry


@pytest.mark.parametrize(
    ("host", "auth"),
    [
        ("http://alice:s%40cret-canary@m:5000", ("alice", "s@cret-canary", None)),
        ("http://:tok-canary@m:5000", (None, None, "tok-canary")),
    ],
)
def test_credentials_written_in_the_tracking_uri_become_the_connections_auth(monkeypatch, host, auth):
    from airflow.sdk.log import _secrets_masker

    settings = _hook(
        monkeypatch,
        host=host,
        extra={"registry_uri": "http://bob:reg-canary@r:5000", "ui_url": "https://x:ui-canary@ui"},
    ).settings
    assert (settings.username, settings.password, settings.token) == auth
    assert (settings.tracking_uri, settings.registry_uri, settings.ui_url) == (
        "http://m:5000",
        "http://r:5000",
        "https://ui",
    )
    env = settings.child_environment()
    assert env["MLFLOW_TRACKING_URI"] == "http://m:5000" and "canary" not in repr(settings)
    masked = _secrets_masker().redact(f"{auth[1] or auth[2]} reg-canary ui-canary")
    assert "canary" not in str(masked)  # registered with Airflow's secrets masker


def test_the_connections_own_login_wins_over_a_uri_userinfo_and_databases_keep_theirs(monkeypatch):
    settings = _hook(monkeypatch, host="http://old:pw-in-uri@m:5000", login="alice", password="pw").settings
    assert (settings.tracking_uri, settings.username, settings.password) == ("http://m:5000", "alice", "pw")
    database = _hook(monkeypatch, host="postgresql://u:db-canary@db/mlflow").settings
    assert database.tracking_uri == "postgresql://u:db-canary@db/mlflow"  # the driver needs it
    assert "db-canary" not in repr(database) and "db-canary" not in MlflowHook("mlflow_test").describe()


def test_redact_text_drops_credentials_from_every_url_in_a_message():
    message = "API request to http://u:p@h:5/api failed; see 'https://tok@y/z'"
    assert redact_text(message) == "API request to http://h:5/api failed; see 'https://y/z'"
