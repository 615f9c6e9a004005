"""DAGs for the evaluation and promotion tests: evaluate -> promote, and a crash."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG
from support.model_fixtures import EVAL_CONFIG

from airflow_ml_provider.operators.evaluation import ModelEvaluationOperator
from airflow_ml_provider.operators.promotion import PromoteModelOperator

PARAMS = {"candidate_uri": "", "data_uri": "", "model_name": ""}


class PromoteThatCrashesOnce(PromoteModelOperator):
    """Loses its worker between registering the version and moving the alias, on the first try."""

    def execute_tracked(self, context, run):  # type: ignore[no-untyped-def]
        if context["ti"].try_number == 1:

            def crash(*args, **kwargs):  # type: ignore[no-untyped-def]
                raise RuntimeError("worker lost between registering and aliasing")

            run.hook.move_alias = crash
        return super().execute_tracked(context, run)


def _evaluate(on_not_blessed: str = "fail") -> ModelEvaluationOperator:
    return ModelEvaluationOperator(
        task_id="evaluate",
        candidate_model_uri="{{ params.candidate_uri }}",
        data_uri="{{ params.data_uri }}",
        registered_model_name="{{ params.model_name }}",
        eval_config=EVAL_CONFIG,
        on_not_blessed=on_not_blessed,
        retries=0,
    )


with DAG(dag_id="blessing_pipeline", schedule=None, render_template_as_native_obj=True, params=PARAMS):
    evaluate = _evaluate()
    PromoteModelOperator(
        task_id="promote", model_name="{{ params.model_name }}", evaluation=evaluate.output, retries=0
    )

with DAG(dag_id="blessing_skip", schedule=None, render_template_as_native_obj=True, params=PARAMS):
    evaluate = _evaluate(on_not_blessed="skip")
    PromoteModelOperator(
        task_id="promote", model_name="{{ params.model_name }}", evaluation=evaluate.output, retries=0
    )

# A trusted holdout: evaluated on the new version and on the holdout (evaluate_on="both", the default
# with a holdout_uri); blessed only on both.
with DAG(
    dag_id="blessing_holdout",
    schedule=None,
    render_template_as_native_obj=True,
    params={**PARAMS, "holdout_uri": ""},
):
    evaluate = ModelEvaluationOperator(
        task_id="evaluate",
        candidate_model_uri="{{ params.candidate_uri }}",
        data_uri="{{ params.data_uri }}",
        holdout_uri="{{ params.holdout_uri }}",
        registered_model_name="{{ params.model_name }}",
        eval_config=EVAL_CONFIG,
        retries=0,
    )
    PromoteModelOperator(
        task_id="promote", model_name="{{ params.model_name }}", evaluation=evaluate.output, retries=0
    )

with DAG(
    dag_id="blessing_crash_after_register", schedule=None, render_template_as_native_obj=True, params=PARAMS
):
    evaluate = _evaluate()
    PromoteThatCrashesOnce(
        task_id="promote",
        model_name="{{ params.model_name }}",
        evaluation=evaluate.output,
        retries=1,
        retry_delay=timedelta(seconds=0),
    )
