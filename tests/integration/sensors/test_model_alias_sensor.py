"""ModelAliasSensor through real Airflow (dag.test) against a real mlflow server, in every mode."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from support.harness import load_dag, run_dag, task_states

from airflow_ml_provider.sensors.model_alias import known_version_key, normalize_version

TASK = "wait_for_champion"


def register(client: Any, versions: int = 2) -> tuple[str, list[Any]]:
    """A registered model with ``versions`` versions, each from a real (empty) run."""
    name = f"churn-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(f"model-alias-{name}")
    client.create_registered_model(name)
    made = []
    for _ in range(versions):
        run_id = client.create_run(experiment_id).info.run_id
        made.append(client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id))
    return name, made


def xcom(dag_id: str, run_id: str, task_id: str = TASK) -> dict[str, Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id).all()
        return {row.key: XComModel.deserialize_value(row) for row in rows}


def later(delay: float, action: Any) -> threading.Timer:
    timer = threading.Timer(delay, action)
    timer.start()
    return timer


# -- argument handling --------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("None", None), (" 3 ", "3"), (3, "3"), ("007", "7")],
)
def test_normalize_version(value: Any, expected: str | None) -> None:
    assert normalize_version(value) == expected


@pytest.mark.unit
@pytest.mark.parametrize("value", ["v3", "0", "-1", "1.5", 2.0, True, ["1"]])
def test_normalize_version_rejects_non_versions(value: Any) -> None:
    with pytest.raises(ValueError, match="known_version"):
        normalize_version(value)


@pytest.mark.unit
def test_known_version_key_is_readable_for_plain_names_and_safe_for_others() -> None:
    assert known_version_key("churn", "champion") == "model_alias_version.churn@champion"
    odd = known_version_key("churn model?#%", "champion")
    assert odd.startswith("model_alias_version.sha256-") and odd.endswith("@champion")
    assert all(c.isalnum() or c in "._-@" for c in odd)
    assert odd != known_version_key("churn model?#%", "challenger")


@pytest.mark.unit
def test_poll_interval_sets_poke_interval_unless_given() -> None:
    from airflow_ml_provider.sensors.model_alias import ModelAliasSensor

    assert ModelAliasSensor(task_id="a", model_name="m").poke_interval == 30
    assert ModelAliasSensor(task_id="b", model_name="m", poll_interval=5).poke_interval == 5
    assert ModelAliasSensor(task_id="c", model_name="m", poke_interval=7).poke_interval == 7


# -- through dag.test() ---------------------------------------------------------------------------


@pytest.mark.integration
def test_poke_mode_succeeds_when_the_alias_already_moved(airflow_db, mlflow_conn, mlflow_client):
    name, (_, v2) = register(mlflow_client)
    mlflow_client.set_registered_model_alias(name, "champion", v2.version)

    dag_run = run_dag(load_dag("test_model_alias_poke"), conf={"model": name, "known_version": "1"})

    values = xcom("test_model_alias_poke", dag_run.run_id)
    assert values["return_value"] == {
        "status": "success",
        "model_name": name,
        "alias": "champion",
        "version": "2",
        "previous_version": "1",
        "run_id": v2.run_id,
        "source": f"runs:/{v2.run_id}/model",
        "aliases": ["champion"],
    }
    assert str(values[known_version_key(name, "champion")]) == "2"


@pytest.mark.integration
def test_without_known_version_the_previous_delivery_is_the_known_version(
    airflow_db, mlflow_conn, mlflow_client
):
    dag = load_dag("test_model_alias_poke")
    name, (v1, v2) = register(mlflow_client)
    mlflow_client.set_registered_model_alias(name, "champion", v1.version)

    # No earlier delivery: any version will do.
    first = run_dag(dag, conf={"model": name})
    assert xcom(dag.dag_id, first.run_id)["return_value"]["version"] == "1"
    assert xcom(dag.dag_id, first.run_id)["return_value"]["previous_version"] is None

    # Another model's deliveries in this DAG do not count for this one.
    other, (o1,) = register(mlflow_client, versions=1)
    mlflow_client.set_registered_model_alias(other, "champion", o1.version)
    assert xcom(dag.dag_id, run_dag(dag, conf={"model": other}).run_id)["return_value"]["version"] == "1"

    # The alias still points to what the first run delivered: the sensor times out (5 s).
    stuck = run_dag(dag, conf={"model": name}, expect="failed")
    assert task_states(stuck) == {TASK: "failed"}
    assert "return_value" not in xcom(dag.dag_id, stuck.run_id)

    # Moved: delivered, with the first run's version as the previous one (the failed run had none).
    mlflow_client.set_registered_model_alias(name, "champion", v2.version)
    third = run_dag(dag, conf={"model": name})
    event = xcom(dag.dag_id, third.run_id)["return_value"]
    assert (event["version"], event["previous_version"]) == ("2", "1")


@pytest.mark.integration
def test_reschedule_mode_waits_for_the_move(airflow_db, mlflow_conn, mlflow_client):
    name, (v1, v2) = register(mlflow_client)
    mlflow_client.set_registered_model_alias(name, "champion", v1.version)
    timer = later(3.0, lambda: mlflow_client.set_registered_model_alias(name, "champion", v2.version))
    try:
        dag_run = run_dag(load_dag("test_model_alias_reschedule"), conf={"model": name, "known_version": 1})
    finally:
        timer.cancel()
    event = xcom("test_model_alias_reschedule", dag_run.run_id)["return_value"]
    assert (event["version"], event["previous_version"]) == ("2", "1")


def once_trigger_runs(
    caplog: pytest.LogCaptureFixture, action: Any, timeout: float = 300.0
) -> threading.Thread:
    """Run ``action`` in a thread once dag.test() has started running the deferred task's trigger."""
    import time

    def wait_then_act() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any("running trigger in line" in r.getMessage() for r in list(caplog.records)):
                time.sleep(1.0)  # let the trigger see the unchanged alias first
                action()
                return
            time.sleep(0.2)

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


@pytest.mark.integration
def test_deferrable_mode_fires_through_the_trigger(airflow_db, mlflow_conn, mlflow_client, caplog):
    dag_id = "test_model_alias_deferrable"
    name, (v1, v2) = register(mlflow_client)
    mlflow_client.set_registered_model_alias(name, "champion", v1.version)
    dag = load_dag(dag_id)  # before the thread starts: two threads importing Airflow models deadlock
    mover = once_trigger_runs(
        caplog, lambda: mlflow_client.set_registered_model_alias(name, "champion", v2.version)
    )

    dag_run = run_dag(dag, conf={"model": name, "known_version": "1"})
    mover.join(timeout=5)

    assert "[DAG TEST] running trigger in line" in caplog.text
    values = xcom(dag_id, dag_run.run_id)
    assert values["return_value"]["version"] == "2"
    assert values["return_value"]["previous_version"] == "1"
    assert values["return_value"]["run_id"] == v2.run_id
    assert str(values[known_version_key(name, "champion")]) == "2"


@pytest.mark.integration
@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"alias": "latest"}, "alias 'latest' is reserved by MLflow"),
        ({"alias": "bad alias"}, "alias must be a registered model alias"),
        ({"known_version": "v2"}, "known_version must be a model version number"),
    ],
)
def test_bad_arguments_fail_the_task_naming_the_argument(airflow_db, mlflow_conn, capfd, conf, message):
    dag_run = run_dag(load_dag("test_model_alias_poke"), conf={"model": "churn", **conf}, expect="failed")
    assert task_states(dag_run) == {TASK: "failed"}
    output = capfd.readouterr()
    assert message in output.out + output.err
