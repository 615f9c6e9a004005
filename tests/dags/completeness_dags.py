"""DAGs for the dataset-version completeness tests (tests/integration/test_dataset_completeness.py)."""

from __future__ import annotations

from airflow.sdk import DAG
from support.model_fixtures import EVAL_CONFIG

from airflow_ml_provider.operators.evaluation import ModelEvaluationOperator
from airflow_ml_provider.operators.promotion import PromoteModelOperator
from airflow_ml_provider.operators.validation import DataValidationOperator
from airflow_ml_provider.versions import dataset_version

PARAMS = {"experiment": "", "model_name": "", "candidate_uri": ""}
TRACKING = {"mlflow_experiment": "{{ params.experiment }}"}
VERSION_URI = dataset_version(field="uri")


def _validate() -> DataValidationOperator:
    return DataValidationOperator(
        task_id="validate", data_uri=VERSION_URI, on_anomaly="warn", cache=False, **TRACKING
    )


with DAG("completeness_pipeline", schedule=None, params=PARAMS, render_template_as_native_obj=True):
    _evaluate = ModelEvaluationOperator(
        task_id="evaluate",
        candidate_model_uri="{{ params.candidate_uri }}",
        data_uri=VERSION_URI,
        registered_model_name="{{ params.model_name }}",
        eval_config=EVAL_CONFIG,
        **TRACKING,
    )
    _promote = PromoteModelOperator(
        task_id="promote", model_name="{{ params.model_name }}", evaluation=_evaluate.output, **TRACKING
    )
    _validate() >> _evaluate >> _promote

with DAG(
    "completeness_opt_out",
    schedule=None,
    params=PARAMS,
    render_template_as_native_obj=True,
    default_args={"completion_marker": None},  # data that never gets a marker
):
    _validate()
