"""DAGs the tracking tests run with dag.test(); parameters come from the run's conf."""

from __future__ import annotations

import sys
from datetime import timedelta

from airflow.sdk import DAG
from support.step_env import step_python

from airflow_ml_provider.operators.step import MLStepOperator

with DAG("test_tracking_chain", schedule=None, catchup=False, tags=["test"]):
    a = MLStepOperator(task_id="a", step="echo", spec={"payload": 1, "metrics": {"m": 0.5}})
    b = MLStepOperator(task_id="b", step="echo", spec={"payload": "{{ ti.xcom_pull('a')['payload'] }}"})
    a >> b

with DAG("test_tracking_retry", schedule=None, catchup=False, tags=["test"]):
    MLStepOperator(
        task_id="flaky",
        step="steps_for_tests:fail_once",
        spec={"marker": "{{ dag_run.conf['marker'] }}"},
        placement="worker",  # the step stops the test's own MLflow server, in this process
        retries=1,
        retry_delay=timedelta(seconds=0),
    )

with DAG("test_tracking_failure", schedule=None, catchup=False, tags=["test"]):
    MLStepOperator(task_id="broken", step="steps_for_tests:always_fail", spec={"message": "boom"})

with DAG("test_tracking_mapped", schedule=None, catchup=False, tags=["test"]):
    MLStepOperator.partial(task_id="m", step="echo").expand(spec=[{"payload": i} for i in range(3)])

with DAG("test_tracking_bad_connection", schedule=None, catchup=False, tags=["test"]):
    MLStepOperator(task_id="unreachable", step="echo", mlflow_conn_id="mlflow_unreachable")
    MLStepOperator(task_id="wrong_token", step="echo", mlflow_conn_id="mlflow_wrong_token")

with DAG(
    "test_schema_inference", schedule=None, catchup=False, render_template_as_native_obj=True, tags=["test"]
):
    from airflow_ml_provider.operators.validation import SchemaInferenceOperator

    data = MLStepOperator(
        task_id="data", step="generate_dataset", spec={"root": "{{ dag_run.conf['root'] }}/data", "rows": 500}
    )
    SchemaInferenceOperator(
        task_id="infer",
        data_uri="{{ ti.xcom_pull('data')['versions'][0]['uri'] }}",
        schema_uri="{{ dag_run.conf['root'] }}/schema.pbtxt",
    ).set_upstream(data)

with DAG(
    "test_validation_in_another_python",
    schedule=None,
    catchup=False,
    render_template_as_native_obj=True,
    tags=["test"],
):
    from airflow_ml_provider.operators.validation import DataValidationOperator

    versions = MLStepOperator(
        task_id="data",
        step="generate_dataset",
        spec={
            "root": "{{ dag_run.conf['root'] }}/data",
            "rows": 800,
            "versions": 2,
            "knobs_per_version": {"2": {"missing_column": "age"}},
        },
    )
    DataValidationOperator(
        task_id="validate",
        data_uri="{{ ti.xcom_pull('data')['versions'][1]['uri'] }}",
        schema_uri="{{ dag_run.conf['root'] }}/schema.pbtxt",
        on_anomaly="warn",
        placement="interpreter",
        python=step_python(),
        step_timeout=300,
    ).set_upstream(versions)

with DAG("test_secrets_stay_secret", schedule=None, catchup=False, tags=["test"]):
    # In the worker, and in another interpreter (which gets MLflow's credentials in its environment).
    MLStepOperator(
        task_id="in_process", step="echo", spec={"payload": 1, "metrics": {"m": 1.0}}, placement="worker"
    )
    MLStepOperator(
        task_id="child", step="echo", spec={"payload": 2}, placement="interpreter", python=sys.executable
    )


def _restart_mlflow(context):
    import steps_for_tests

    steps_for_tests.restart_mlflow(context)


with DAG("test_tracking_outage", schedule=None, catchup=False, tags=["test"]):
    MLStepOperator(
        task_id="through_outage",
        step="steps_for_tests:stop_mlflow_once",
        spec={"marker": "{{ dag_run.conf['marker'] }}"},
        placement="worker",  # the step stops the test's own MLflow server, in this process
        retries=1,
        retry_delay=timedelta(seconds=1),
        on_retry_callback=_restart_mlflow,
    )
