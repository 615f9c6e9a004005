"""DAGs whose task fails in a known way, for the tests of what the task log says about it."""

from __future__ import annotations

from airflow.sdk import DAG

from airflow_ml_provider.operators.step import MLStepOperator
from airflow_ml_provider.operators.training import DistributedTrainingOperator

with DAG(
    dag_id="training_bad_run_fn",
    schedule=None,
    render_template_as_native_obj=True,
    params={"run_fn": "training_fns:does_not_exist", "workers": 2},
) as bad_run_fn:
    DistributedTrainingOperator(
        task_id="train",
        run_fn="{{ params.run_fn }}",
        train_uri="/nonexistent/never-read",
        workers="{{ params.workers }}",
        retries=0,
    )

with DAG(dag_id="step_raises_in_process", schedule=None) as raises_in_process:
    MLStepOperator(task_id="step", step="echo", spec={"fail_with": "the step broke: 4711"}, retries=0)

with DAG(dag_id="step_raises_in_python", schedule=None) as raises_in_python:
    MLStepOperator(
        task_id="step",
        step="echo",
        spec={"fail_with": "the step broke: 4712"},
        placement="interpreter",
        retries=0,
    )
