"""DAGs the ChampionGuardOperator tests run with dag.test(); the model and the source come from the run's conf."""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Asset

from airflow_ml_provider.operators.guard import ChampionGuardOperator

# Each test's conf: model, and one of callable / serving_experiment / sql.
GUARD: dict[str, Any] = {
    "model_name": "{{ dag_run.conf['model'] }}",
    "metric": "live_auc",
    "metric_callable": "{{ dag_run.conf.get('callable', '') }}",
    "serving_experiment": "{{ dag_run.conf.get('serving_experiment', '') }}",
    "sql": "{{ dag_run.conf.get('sql', '') }}",
    "sql_conn_id": "guard_metrics_db",
    "version": "{{ dag_run.conf.get('version', '') }}",
    "lower_bound": 0.6,
    "window": "{{ dag_run.conf.get('window', 20) }}",
    "check_interval": 0.3,
    "consecutive_breaches": 3,
    "on_no_data": "{{ dag_run.conf.get('on_no_data', 'fail') }}",
    "outlets": [Asset("guard_test_outcome")],
    "rollback_assets": [Asset("guard_test_champion")],
}


def fail_first_try(context: Any, result: Any = None) -> None:
    """post_execute: the first try fails after its work (a worker lost after the rollback)."""
    if context["ti"].try_number == 1:
        raise RuntimeError("the first try is lost after its rollback (test)")


with DAG("test_champion_guard", schedule=None, catchup=False, tags=["test"]):
    ChampionGuardOperator(task_id="guard", deferrable=False, **GUARD)

with DAG("test_champion_guard_deferrable", schedule=None, catchup=False, tags=["test"]):
    ChampionGuardOperator(task_id="guard", deferrable=True, **GUARD)

with DAG("test_champion_guard_retry", schedule=None, catchup=False, tags=["test"]):
    ChampionGuardOperator(
        task_id="guard", deferrable=False, retries=1, retry_delay=0, post_execute=fail_first_try, **GUARD
    )
