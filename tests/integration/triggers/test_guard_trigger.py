"""ChampionGuardTrigger driven for real (``run().asend``) against the session's mlflow server."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from support.guard_metrics import CALLABLE, script

from airflow_ml_provider.hooks.live_metric import GuardSpec
from airflow_ml_provider.triggers.guard import ChampionGuardTrigger

pytestmark = pytest.mark.integration


def champion_v2(client: Any) -> str:
    name = f"guard-trigger-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(f"guard-{name}")
    client.create_registered_model(name)
    for _ in range(3):
        run_id = client.create_run(experiment_id).info.run_id
        client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias(name, "champion", "2")
    return name


def first_event(name: str, *, window: float = 20.0, source: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = GuardSpec(
        model_name=name,
        version="2",
        metric="live_auc",
        source=source or {"kind": "callable", "path": CALLABLE},
        lower_bound=0.6,
        consecutive_breaches=2,
    )
    trigger = ChampionGuardTrigger(spec.to_dict(), check_interval=0.2, end_at=time.time() + window)
    event = asyncio.run(asyncio.wait_for(trigger.run().asend(None), 60))
    return dict(event.payload)


def set_champion(client: Any, name: str, version: str) -> Any:
    return lambda: client.set_registered_model_alias(name, "champion", version)


@pytest.mark.parametrize(
    ("values", "actions", "window", "status", "checks"),
    [
        ([0.9, 0.5, 0.5], {}, 20.0, "breached", 3),
        ([0.5, None, 0.5, 0.9], {}, 1.0, "healthy", None),  # a gap breaks the run of breaches
        ([None], {}, 0.5, "no_data", None),
        ([0.9], {"at_1": "3"}, 20.0, "moved", 2),  # v3 promoted by hand during the second check
    ],
)
def test_events(mlflow_conn, mlflow_client, values, actions, window, status, checks):
    name = champion_v2(mlflow_client)
    script(name, values, **{k: set_champion(mlflow_client, name, v) for k, v in actions.items()})

    event = first_event(name, window=window)

    assert event["status"] == status
    assert (event["model_name"], event["version"], event["metric"]) == (name, "2", "live_auc")
    assert event["guard"]["lower_bound"] == 0.6  # the event carries what was watched
    if checks is not None:
        assert event["checks"] == checks
    if status == "breached":
        assert event["breach_values"] == [0.5, 0.5] and event["values"] == [0.9, 0.5, 0.5]
    if status == "moved":
        assert event["current_version"] == "3"


def test_an_error_becomes_an_error_event(mlflow_conn, mlflow_client):
    name = champion_v2(mlflow_client)
    event = first_event(name, source={"kind": "callable", "path": "support.guard_metrics:missing"})
    assert event["status"] == "error"
    assert (
        event["message"]
        == "TypeError: metric_callable 'support.guard_metrics:missing': support.guard_metrics has no function 'missing'."
    )


def test_an_unknown_model_is_a_move_not_an_error(mlflow_conn, mlflow_client):
    event = first_event(f"never-registered-{uuid.uuid4().hex[:6]}")
    assert (event["status"], event["current_version"], event["checks"]) == ("moved", None, 0)
