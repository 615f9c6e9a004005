"""DAGs the ModelAliasSensor tests run with dag.test(); the model (and more) come from the run's conf."""

from __future__ import annotations

from airflow.sdk import DAG

from airflow_ml_provider.sensors.model_alias import ModelAliasSensor

with DAG("test_model_alias_poke", schedule=None, catchup=False, tags=["test"]):
    ModelAliasSensor(
        task_id="wait_for_champion",
        model_name="{{ dag_run.conf['model'] }}",
        alias="{{ dag_run.conf.get('alias', 'champion') }}",
        known_version="{{ dag_run.conf.get('known_version', '') }}",
        poll_interval=0.5,
        timeout=5,
        mode="poke",
        deferrable=False,
    )

with DAG("test_model_alias_reschedule", schedule=None, catchup=False, tags=["test"]):
    ModelAliasSensor(
        task_id="wait_for_champion",
        model_name="{{ dag_run.conf['model'] }}",
        known_version="{{ dag_run.conf.get('known_version', '') }}",
        poll_interval=1,
        timeout=60,
        mode="reschedule",
        deferrable=False,
    )

with DAG("test_model_alias_deferrable", schedule=None, catchup=False, tags=["test"]):
    ModelAliasSensor(
        task_id="wait_for_champion",
        model_name="{{ dag_run.conf['model'] }}",
        known_version="{{ dag_run.conf.get('known_version', '') }}",
        poll_interval=0.5,
        timeout=120,
        deferrable=True,
    )
