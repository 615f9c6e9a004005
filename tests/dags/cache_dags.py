"""DAGs for the step cache tests (tests/integration/test_step_cache.py)."""

from __future__ import annotations

from airflow.sdk import DAG
from support.model_fixtures import EVAL_CONFIG

from airflow_ml_provider.operators.evaluation import ModelEvaluationOperator
from airflow_ml_provider.operators.promotion import PromoteModelOperator
from airflow_ml_provider.operators.step import MLStepOperator
from airflow_ml_provider.operators.validation import DataValidationOperator

PARAMS = {
    "experiment": "",
    "data_uri": "",
    "schema_uri": "",
    "drift_numeric": 0.3,
    "candidate_uri": "",
    "step": "",
}
TRACKING = {"mlflow_experiment": "{{ params.experiment }}"}


def _validate(**kwargs) -> DataValidationOperator:  # type: ignore[no-untyped-def]
    return DataValidationOperator(
        task_id="validate",
        data_uri="{{ params.data_uri }}",
        schema_uri="{{ params.schema_uri }}",
        drift={"numeric_jsd": "{{ params.drift_numeric }}"},
        on_anomaly="warn",
        **TRACKING,
        **kwargs,
    )


with DAG("cache_validation", schedule=None, params=PARAMS, render_template_as_native_obj=True):
    _validate()

with DAG("cache_validation_gate", schedule=None, params=PARAMS, render_template_as_native_obj=True):
    DataValidationOperator(
        task_id="validate",
        data_uri="{{ params.data_uri }}",
        schema_uri="{{ params.schema_uri }}",
        on_anomaly="fail",
        **TRACKING,
    )

with DAG("cache_validation_off", schedule=None, params=PARAMS, render_template_as_native_obj=True):
    _validate(cache=False)

with DAG(
    "cache_validation_dag_off",
    schedule=None,
    params=PARAMS,
    render_template_as_native_obj=True,
    default_args={"cache": False},
):
    _validate()

with DAG("cache_evaluation", schedule=None, params=PARAMS, render_template_as_native_obj=True):
    ModelEvaluationOperator(
        task_id="evaluate",
        candidate_model_uri="{{ params.candidate_uri }}",
        data_uri="{{ params.data_uri }}",
        eval_config=EVAL_CONFIG,
        **TRACKING,
    )

with DAG("cache_custom_step", schedule=None, params=PARAMS, render_template_as_native_obj=True):
    MLStepOperator(
        task_id="step",
        step="{{ params.step }}",
        spec={"data_uri": "{{ params.data_uri }}"},
        cache=True,
        **TRACKING,
    )

with DAG("freshness_probe", schedule=None, params=PARAMS, render_template_as_native_obj=True):
    MLStepOperator(task_id="step", step="steps_for_tests:succeed", **TRACKING)

with DAG(
    "cache_promote",
    schedule=None,
    params={**PARAMS, "model_name": ""},
    render_template_as_native_obj=True,
):
    _evaluate = ModelEvaluationOperator(
        task_id="evaluate",
        candidate_model_uri="{{ params.candidate_uri }}",
        data_uri="{{ params.data_uri }}",
        registered_model_name="{{ params.model_name }}",
        eval_config=EVAL_CONFIG,
        **TRACKING,
    )
    PromoteModelOperator(
        task_id="promote", model_name="{{ params.model_name }}", evaluation=_evaluate.output, **TRACKING
    )
