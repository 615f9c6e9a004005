"""DAGs whose task fails in a known way, for the tests of what the task log says about it."""

from __future__ import annotations

from airflow.sdk import DAG

from airflow_ml_provider.operators.step import MLStepOperator
from airflow_ml_provider.operators.training import DistributedTrainingOperator
from airflow_ml_provider.operators.validation import SchemaInferenceOperator

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
    MLStepOperator(
        task_id="step", step="echo", spec={"fail_with": "the step broke: 4711"}, placement="worker", retries=0
    )

with DAG(dag_id="step_raises_in_python", schedule=None) as raises_in_python:
    MLStepOperator(
        task_id="step",
        step="echo",
        spec={"fail_with": "the step broke: 4712"},
        placement="interpreter",
        retries=0,
    )

# A TensorFlow step placed in the task's own process: in Airflow's environment (no TensorFlow) it
# must say where to run it instead.
with DAG(
    dag_id="tensorflow_step_on_the_worker",
    schedule=None,
    params={"data_uri": "/nonexistent", "schema_uri": "/nonexistent/schema.pbtxt"},
) as tensorflow_on_worker:
    SchemaInferenceOperator(
        task_id="infer_schema",
        data_uri="{{ params.data_uri }}",
        schema_uri="{{ params.schema_uri }}",
        completion_marker=None,
        placement="worker",
        retries=0,
    )
