"""
ChampionGuardOperator through real Airflow (dag.test) against the session's real mlflow server:
a sustained breach rolls the champion back (compare-and-set, recorded in the alias history, an
asset event), a healthy metric leaves it, a newer promotion is never undone, a retry finishes the
first try's rollback, and each metric source (callable, MLflow serving runs, SQL on PostgreSQL)
drives it. The deferrable variant's trigger runs inline under dag.test().
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest
from support.guard_metrics import CALLABLE, ensure_postgres_hook, script
from support.harness import (
    asset_event_extras,
    create_database,
    drop_database,
    load_dag,
    log_problems,
    postgres_base_url,
    run_dag,
    task_mlflow_run,
    task_states,
    task_xcom,
)

from airflow_ml_provider.vocabulary import (
    TAG_GUARD_OUTCOME,
    TAG_GUARD_REASON,
    TAG_GUARD_ROLLED_BACK_TO,
    TAG_GUARD_VERSION,
)

pytestmark = pytest.mark.integration


def champions(client: Any, *, promoted: int = 2, versions: int = 3) -> str:
    """A registered model with ``versions`` versions, the first ``promoted`` promoted in turn."""
    from airflow_ml_provider.hooks.mlflow import MlflowHook

    name = f"guard-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(f"guard-{name}")
    client.create_registered_model(name)
    for _ in range(versions):
        run_id = client.create_run(experiment_id).info.run_id
        client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id)
    for version in range(1, promoted + 1):
        MlflowHook().move_alias(
            name, str(version), expected=str(version - 1) if version > 1 else None, owner=f"test/{version}"
        )
    return name


def promote(name: str, version: str, expected: str) -> None:
    from airflow_ml_provider.hooks.mlflow import MlflowHook

    MlflowHook().move_alias(name, version, expected=expected, owner=f"test/newer/{version}")


def history(name: str) -> list[tuple[str, str | None, str]]:
    from airflow_ml_provider.hooks.mlflow import MlflowHook

    return [(e.kind, e.from_version, e.to_version) for e in MlflowHook().alias_history(name)]


def assert_rolled_back(
    client: Any, name: str, dag_run: Any, values: list[float], xcom_values: list[float] | None = None
) -> None:
    """v2 breached and went back to v1: the alias, the history, the XCom, the run, the assets."""
    assert task_states(dag_run) == {"guard": "success"}
    assert client.get_registered_model(name).aliases == {"champion": "1", "previous_champion": "2"}
    assert history(name) == [("promotion", None, "1"), ("promotion", "1", "2"), ("rollback", "2", "1")]
    from airflow_ml_provider.hooks.mlflow import MlflowHook

    entry = MlflowHook().alias_history(name)[-1]
    assert (entry.dag_id, entry.run_id, entry.task_id) == (dag_run.dag_id, dag_run.run_id, "guard")
    assert "live_auc of" in entry.reason and "< 0.6 (lower_bound)" in entry.reason
    assert "3 consecutive checks" in entry.reason

    result = task_xcom(dag_run, "guard")
    assert (result["outcome"], result["version"], result["rolled_back_to"]) == ("rolled_back", "2", "1")
    assert result["values"] == (values if xcom_values is None else xcom_values)
    assert result["reason"] == entry.reason

    run = task_mlflow_run(client, dag_run.dag_id, dag_run, "guard")
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_GUARD_OUTCOME] == "rolled_back"
    assert run.data.tags[TAG_GUARD_VERSION] == "2"
    assert run.data.tags[TAG_GUARD_ROLLED_BACK_TO] == "1"
    assert run.data.tags[TAG_GUARD_REASON] == entry.reason
    assert run.data.params["guarded_version"] == "2"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "live_auc")] == values

    extra = {
        "model_name": name,
        "from_version": "2",
        "to_version": "1",
        "reason": entry.reason,
        "outcome": "rolled_back",
        "metric": "live_auc",
    }
    assert asset_event_extras("guard_test_outcome", dag_run.run_id) == [extra]
    assert asset_event_extras("guard_test_champion", dag_run.run_id) == [extra]


def test_a_sustained_breach_rolls_the_champion_back(airflow_db, mlflow_conn, mlflow_client, capfd):
    name = champions(mlflow_client)
    calls = script(name, [0.8, 0.5, 0.55, 0.4, 0.9])  # one healthy value, then three breaches
    capfd.readouterr()

    dag_run = run_dag(load_dag("test_champion_guard"), conf={"model": name, "callable": CALLABLE})

    assert_rolled_back(mlflow_client, name, dag_run, [0.8, 0.5, 0.55, 0.4])
    assert calls.calls == ["2"] * 4  # the guarded version: the champion when the task started
    problems = log_problems(capfd.readouterr().out)
    assert not problems, "\n".join(problems)


def test_a_healthy_metric_leaves_the_champion_and_a_gap_resets_the_count(
    airflow_db, mlflow_conn, mlflow_client
):
    name = champions(mlflow_client)
    # Two breaches, a check without a value, two more: never three in a row.
    script(name, [0.5, 0.5, None, 0.5, 0.5, 0.7])

    dag_run = run_dag(
        load_dag("test_champion_guard"), conf={"model": name, "callable": CALLABLE, "window": 2}
    )

    result = task_xcom(dag_run, "guard")
    assert result["outcome"] == "healthy" and result["rolled_back_to"] is None
    assert result["values"][:6] == [0.5, 0.5, None, 0.5, 0.5, 0.7]
    assert mlflow_client.get_registered_model(name).aliases == {"champion": "2", "previous_champion": "1"}
    assert [kind for kind, *_ in history(name)] == ["promotion", "promotion"]
    assert asset_event_extras("guard_test_champion", dag_run.run_id) == []  # only a rollback reaches it
    [outcome] = asset_event_extras("guard_test_outcome", dag_run.run_id)
    assert (outcome["outcome"], outcome["to_version"]) == ("healthy", None)


def test_a_newer_promotion_during_the_breach_is_never_rolled_back(airflow_db, mlflow_conn, mlflow_client):
    name = champions(mlflow_client)
    # The third breaching value is read after v3 was promoted (the check saw v2 just before).
    script(name, [0.5], at_2=lambda: promote(name, "3", expected="2"))

    dag_run = run_dag(load_dag("test_champion_guard"), conf={"model": name, "callable": CALLABLE})

    result = task_xcom(dag_run, "guard")
    assert result["outcome"] == "superseded" and result["rolled_back_to"] is None
    assert "not rolled back" in result["reason"]
    assert mlflow_client.get_registered_model(name).aliases == {"champion": "3", "previous_champion": "2"}
    assert history(name)[-1] == ("promotion", "2", "3")
    assert asset_event_extras("guard_test_champion", dag_run.run_id) == []


def test_the_guard_stops_when_the_champion_moves_during_the_window(airflow_db, mlflow_conn, mlflow_client):
    name = champions(mlflow_client)
    script(name, [0.8], at_1=lambda: promote(name, "3", expected="2"))

    dag_run = run_dag(load_dag("test_champion_guard"), conf={"model": name, "callable": CALLABLE})

    result = task_xcom(dag_run, "guard")
    assert (result["outcome"], result["checks"]) == ("moved", 2)
    assert "moved from v2 to v3" in result["reason"]
    assert mlflow_client.get_registered_model(name).aliases["champion"] == "3"


def test_a_breach_of_the_first_champion_fails_the_task_loudly(airflow_db, mlflow_conn, mlflow_client, capfd):
    name = champions(mlflow_client, promoted=1)
    script(name, [0.3])
    capfd.readouterr()

    dag_run = run_dag(
        load_dag("test_champion_guard"), conf={"model": name, "callable": CALLABLE}, expect="failed"
    )

    assert task_states(dag_run) == {"guard": "failed"}
    output = capfd.readouterr().out
    assert "ChampionGuardFailed" in output
    assert "Nothing to roll back to: 'previous_champion' is not set (v1 is the first champion)" in output
    assert "but a breach (< 0.6 (lower_bound)) has nothing to roll back to" in output  # warned at start
    assert mlflow_client.get_registered_model(name).aliases == {"champion": "1"}
    run = task_mlflow_run(mlflow_client, "test_champion_guard", dag_run, "guard")
    assert run.info.status == "FAILED" and run.data.tags[TAG_GUARD_OUTCOME] == "breached"


def test_the_guard_never_returns_to_a_version_that_was_rolled_back(
    airflow_db, mlflow_conn, mlflow_client, capfd
):
    from airflow_ml_provider.hooks._registry import MoveRecord
    from airflow_ml_provider.hooks.mlflow import MlflowHook

    name = champions(mlflow_client)
    MlflowHook().rollback_alias(name, expected="2", record=MoveRecord(reason="v2 was bad live"))
    script(name, [0.3])  # now v1 breaches too; previous_champion is v2
    capfd.readouterr()

    dag_run = run_dag(
        load_dag("test_champion_guard"), conf={"model": name, "callable": CALLABLE}, expect="failed"
    )

    assert "previous_champion v2 was itself rolled back at" in capfd.readouterr().out
    assert mlflow_client.get_registered_model(name).aliases == {"champion": "1", "previous_champion": "2"}
    assert [kind for kind, *_ in history(name)] == ["promotion", "promotion", "rollback"]
    assert task_states(dag_run) == {"guard": "failed"}


@pytest.mark.parametrize(("on_no_data", "state"), [("fail", "failed"), ("warn", "success")])
def test_no_value_in_the_whole_window(airflow_db, mlflow_conn, mlflow_client, on_no_data, state):
    name = champions(mlflow_client)
    script(name, [None])

    dag_run = run_dag(
        load_dag("test_champion_guard"),
        conf={"model": name, "callable": CALLABLE, "window": 0.7, "on_no_data": on_no_data},
        expect=state,
    )

    run = task_mlflow_run(mlflow_client, "test_champion_guard", dag_run, "guard")
    assert run.data.tags[TAG_GUARD_OUTCOME] == "no_data"
    assert "No value of live_auc" in run.data.tags[TAG_GUARD_REASON]
    assert mlflow_client.get_registered_model(name).aliases["champion"] == "2"


def test_a_retry_finishes_the_first_tries_rollback(airflow_db, mlflow_conn, mlflow_client):
    name = champions(mlflow_client)
    calls = script(name, [0.5])

    dag_run = run_dag(load_dag("test_champion_guard_retry"), conf={"model": name, "callable": CALLABLE})

    [ti] = dag_run.get_task_instances()
    assert (str(ti.state), ti.try_number) == ("success", 2)
    assert len(calls.calls) == 3  # the retry did not watch again
    # One rollback, one MLflow run (resumed), one event per asset: that of the try that succeeded.
    # (The retry's XCom has no values: it watched nothing; the run keeps the first try's.)
    assert_rolled_back(mlflow_client, name, dag_run, [0.5, 0.5, 0.5], xcom_values=[])


def test_serving_metric_in_mlflow_deferred(airflow_db, mlflow_conn, mlflow_client, caplog):
    """The MLflow source, in the triggerer: serving logs live_auc per version; v2's is bad."""
    name = champions(mlflow_client)
    serving = mlflow_client.create_experiment(f"serving-{name}")
    for version, values in (("1", [0.84, 0.85]), ("2", [0.7, 0.45])):
        run_id = mlflow_client.create_run(
            serving, tags={"model_name": name, "model_version": version}
        ).info.run_id
        for step, value in enumerate(values):
            mlflow_client.log_metric(run_id, "live_auc", value, step=step)  # the latest value counts

    dag_run = run_dag(
        load_dag("test_champion_guard_deferrable"),
        conf={"model": name, "serving_experiment": f"serving-{name}"},
    )

    assert "[DAG TEST] running trigger in line" in caplog.text
    assert_rolled_back(mlflow_client, name, dag_run, [0.45, 0.45, 0.45])


@pytest.fixture
def metrics_db(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A PostgreSQL database with a live_metrics table, as connection ``guard_metrics_db``."""
    import psycopg2

    if not postgres_base_url():
        pytest.skip("the SQL source is tested on PostgreSQL: set ML_PROVIDER_TEST_DATABASE_URL")
    url = create_database("guard_metrics")
    ensure_postgres_hook()
    parts = urlsplit(url)
    monkeypatch.setenv(
        "AIRFLOW_CONN_GUARD_METRICS_DB",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": parts.hostname,
                "port": parts.port or 5432,
                "login": parts.username,
                "password": parts.password,
                "schema": parts.path.lstrip("/"),
            }
        ),
    )
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE live_metrics (model_name text, model_version text, auc numeric, "
            "logged_at timestamptz DEFAULT now())"
        )
    try:
        yield conn
    finally:
        conn.close()
        drop_database(url)


SQL = (
    "SELECT auc FROM live_metrics WHERE model_name = %(model_name)s AND model_version = %(version)s "
    "ORDER BY logged_at DESC LIMIT 1"
)


def test_sql_metric_through_an_airflow_connection(airflow_db, mlflow_conn, mlflow_client, metrics_db):
    name = champions(mlflow_client)
    with metrics_db.cursor() as cur:
        cur.execute("INSERT INTO live_metrics VALUES (%s, '1', 0.82), (%s, '2', 0.41)", (name, name))

    dag_run = run_dag(load_dag("test_champion_guard"), conf={"model": name, "sql": SQL})

    assert_rolled_back(mlflow_client, name, dag_run, [0.41, 0.41, 0.41])
