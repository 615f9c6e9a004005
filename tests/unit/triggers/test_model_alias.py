"""ModelAliasTrigger: serialization, then driven for real (``run().asend``) against a real mlflow server."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import Any

import pytest

from airflow_ml_provider.triggers.model_alias import ModelAliasTrigger, describe_error

POLL = 0.2


def register(client: Any, versions: int = 2, name: str | None = None) -> tuple[str, list[Any]]:
    """A registered model with ``versions`` versions, each from a real (empty) run."""
    name = name or f"churn-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(f"model-alias-{name}")
    client.create_registered_model(name)
    made = []
    for _ in range(versions):
        run_id = client.create_run(experiment_id).info.run_id
        made.append(client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id))
    return name, made


async def first_event(trigger: ModelAliasTrigger, timeout: float) -> dict[str, Any]:
    event = await asyncio.wait_for(trigger.run().asend(None), timeout)
    return dict(event.payload)


def logged(capfd: pytest.CaptureFixture[str]) -> list[str]:
    """Lines logged so far: a trigger's ``self.log`` is Airflow's structlog logger, which writes to stdout."""
    captured = capfd.readouterr()
    return (captured.out + captured.err).splitlines()


def later(delay: float, action: Any) -> threading.Timer:
    timer = threading.Timer(delay, action)
    timer.start()
    return timer


# -- serialization ------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("known_version", [None, "3"])
def test_serialize_round_trip(known_version: str | None) -> None:
    trigger = ModelAliasTrigger(
        model_name="churn",
        alias="champion",
        known_version=known_version,
        mlflow_conn_id="reg",
        poll_interval=5,
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_ml_provider.triggers.model_alias.ModelAliasTrigger"
    assert kwargs == {
        "model_name": "churn",
        "alias": "champion",
        "known_version": known_version,
        "mlflow_conn_id": "reg",
        "poll_interval": 5,
    }
    json.dumps(kwargs)  # the triggerer stores them in the database
    module, _, cls = classpath.rpartition(".")
    rebuilt = getattr(__import__(module, fromlist=[cls]), cls)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


@pytest.mark.unit
def test_serialize_defaults() -> None:
    _, kwargs = ModelAliasTrigger(model_name="churn", alias="champion").serialize()
    assert kwargs["known_version"] is None
    assert kwargs["mlflow_conn_id"] == "mlflow_default"
    assert kwargs["poll_interval"] == 30.0


@pytest.mark.unit
@pytest.mark.parametrize(
    ("poll_interval", "delays"),
    [(30.0, [60.0, 120.0, 120.0]), (100.0, [200.0, 300.0, 300.0]), (600.0, [600.0, 600.0, 600.0])],
)
def test_backoff_grows_to_a_cap(poll_interval: float, delays: list[float]) -> None:
    trigger = ModelAliasTrigger(model_name="m", alias="a", poll_interval=poll_interval)
    assert [trigger._backoff(n) for n in (1, 2, 3)] == delays


@pytest.mark.unit
def test_describe_error_drops_credentials_in_urls() -> None:
    err = ConnectionError("request to https://bob:s3cret@mlflow.example.com/api failed\nmore")
    assert describe_error(err) == "ConnectionError: request to https://mlflow.example.com/api failed"


# -- driven against a real server ---------------------------------------------------------------


@pytest.mark.integration
def test_fires_when_the_alias_moves_from_the_known_version(mlflow_conn, mlflow_client) -> None:
    name, (v1, v2) = register(mlflow_client)
    mlflow_client.set_registered_model_alias(name, "champion", v1.version)
    trigger = ModelAliasTrigger(model_name=name, alias="champion", known_version="1", poll_interval=POLL)
    timer = later(1.0, lambda: mlflow_client.set_registered_model_alias(name, "champion", v2.version))
    try:
        event = asyncio.run(first_event(trigger, timeout=30))
    finally:
        timer.cancel()
    assert event == {
        "status": "success",
        "model_name": name,
        "alias": "champion",
        "version": "2",
        "previous_version": "1",
        "run_id": v2.run_id,
        "source": f"runs:/{v2.run_id}/model",
        "aliases": ["champion"],
    }


@pytest.mark.integration
def test_fires_at_once_when_the_alias_already_moved(mlflow_conn, mlflow_client) -> None:
    name, (_, v2) = register(mlflow_client)
    mlflow_client.set_registered_model_alias(name, "champion", v2.version)
    mlflow_client.set_registered_model_alias(name, "staging", v2.version)
    trigger = ModelAliasTrigger(model_name=name, alias="champion", known_version="1", poll_interval=POLL)
    event = asyncio.run(first_event(trigger, timeout=10))
    assert (event["version"], event["previous_version"]) == ("2", "1")
    assert event["aliases"] == ["champion", "staging"]


@pytest.mark.integration
def test_does_not_fire_while_the_alias_stays_at_the_known_version(mlflow_conn, mlflow_client, capfd) -> None:
    name, (v1, _) = register(mlflow_client)
    mlflow_client.set_registered_model_alias(name, "champion", v1.version)
    trigger = ModelAliasTrigger(model_name=name, alias="champion", known_version="1", poll_interval=POLL)
    logged(capfd)
    with pytest.raises(TimeoutError):
        asyncio.run(first_event(trigger, timeout=2))
    waiting = [line for line in logged(capfd) if "the known version; waiting" in line]
    assert len(waiting) == 1, "the unchanged state is logged once, not on every poll"


@pytest.mark.integration
@pytest.mark.parametrize("missing", ["model", "alias"])
def test_waits_for_a_missing_model_or_alias_then_fires(mlflow_conn, mlflow_client, missing, capfd) -> None:
    name = f"churn-{uuid.uuid4().hex[:8]}"
    if missing == "alias":
        register(mlflow_client, versions=1, name=name)

    def publish() -> None:
        if missing == "model":
            register(mlflow_client, versions=1, name=name)
        mlflow_client.set_registered_model_alias(name, "champion", "1")

    trigger = ModelAliasTrigger(model_name=name, alias="champion", known_version=None, poll_interval=POLL)
    logged(capfd)
    timer = later(1.5, publish)
    try:
        event = asyncio.run(first_event(trigger, timeout=30))
    finally:
        timer.cancel()
    assert (event["version"], event["previous_version"]) == ("1", None)
    lines = logged(capfd)
    assert sum(f"MLflow model {name!r} has no alias 'champion' yet" in line for line in lines) == 1
    assert not [line for line in lines if "warning" in line and name in line]


@pytest.mark.integration
def test_unreachable_server_keeps_polling_with_warnings(monkeypatch, capfd) -> None:
    from support.harness import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_MLFLOW_DEAD",
        json.dumps({"conn_type": "mlflow", "host": dead, "password": "tok-dead-77"}),
    )
    # MLflow's client retries a refused connection for minutes by default; a poll here should not.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    trigger = ModelAliasTrigger(
        model_name="churn", alias="champion", mlflow_conn_id="mlflow_dead", poll_interval=0.1
    )
    logged(capfd)
    with pytest.raises(TimeoutError):
        asyncio.run(first_event(trigger, timeout=3))
    lines = logged(capfd)
    warnings = [line for line in lines if "warning" in line and "Looking up alias" in line]
    assert len(warnings) >= 3, lines
    assert (
        "'champion' of MLflow model 'churn' through connection 'mlflow_dead' failed (1 in a row)"
        in (warnings[0])
    )
    assert "127.0.0.1" in warnings[0] and "Next try in" in warnings[0]
    assert "(3 in a row)" in warnings[2]
    assert not [line for line in lines if "tok-dead-77" in line]
