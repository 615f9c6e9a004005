"""DAGs for the baseline tests (tests/integration/operators/test_baselines.py): promote, then validate against it."""

from __future__ import annotations

from airflow.sdk import DAG
from support.model_fixtures import EVAL_CONFIG

from airflow_ml_provider.operators.evaluation import ModelEvaluationOperator
from airflow_ml_provider.operators.promotion import PromoteModelOperator
from airflow_ml_provider.operators.validation import DataValidationOperator

PARAMS = {
    "model_name": "",
    "train_uri": "",
    "eval_uri": "",
    "candidate_uri": "",
    "schema_uri": "",
    "data_uri": "",
}

# Validate the training data and the evaluation data, evaluate, promote: the version's baseline is
# the training data's (the candidate's training run names it).
with DAG("baseline_promotion", schedule=None, params=PARAMS, render_template_as_native_obj=True):
    validate_train = DataValidationOperator(
        task_id="validate_train",
        data_uri="{{ params.train_uri }}",
        schema_uri="{{ params.schema_uri }}",
        on_anomaly="warn",
    )
    validate_eval = DataValidationOperator(
        task_id="validate_eval",
        data_uri="{{ params.eval_uri }}",
        schema_uri="{{ params.schema_uri }}",
        on_anomaly="warn",
    )
    evaluate = ModelEvaluationOperator(
        task_id="evaluate",
        candidate_model_uri="{{ params.candidate_uri }}",
        data_uri="{{ params.eval_uri }}",
        registered_model_name="{{ params.model_name }}",
        eval_config=EVAL_CONFIG,
        retries=0,
    )
    promote = PromoteModelOperator(
        task_id="promote", model_name="{{ params.model_name }}", evaluation=evaluate.output, retries=0
    )
    validate_train >> validate_eval >> evaluate >> promote

# The same evaluation and promotion without validation (in the same experiment, so that the
# evaluation of a candidate evaluated before is a cache hit): the version gets no baseline.
with DAG("baseline_promotion_unvalidated", schedule=None, params=PARAMS, render_template_as_native_obj=True):
    evaluate = ModelEvaluationOperator(
        task_id="evaluate",
        candidate_model_uri="{{ params.candidate_uri }}",
        data_uri="{{ params.eval_uri }}",
        registered_model_name="{{ params.model_name }}",
        eval_config=EVAL_CONFIG,
        mlflow_experiment="baseline_promotion",
        retries=0,
    )
    PromoteModelOperator(
        task_id="promote",
        model_name="{{ params.model_name }}",
        evaluation=evaluate.output,
        mlflow_experiment="baseline_promotion",
        retries=0,
    )

for dag_id, role in (("baseline_check", "training"), ("baseline_check_serving", "serving")):
    with DAG(dag_id, schedule=None, params=PARAMS, render_template_as_native_obj=True):
        DataValidationOperator(
            task_id="validate",
            data_uri="{{ params.data_uri }}",
            registered_model_name="{{ params.model_name }}",
            baseline="champion",
            data_role=role,
            on_anomaly="warn",
            retries=0,
        )
