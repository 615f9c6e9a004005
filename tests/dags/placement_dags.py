"""
DAGs for tests/integration/operators/test_step_placements.py: every step operator, once per placement.

One DAG per placement, the placement named once in ``default_args`` (as the "Placements" page tells
users to): ``placement_worker`` (the worker's own process), ``placement_interpreter`` (another
interpreter on the worker) and ``placement_pod`` (a Job of one pod, on the test's fake cluster).
The step cache is off, so that every step runs and logs its own artifacts. The test passes its
paths as params.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG
from support.model_fixtures import EVAL_CONFIG
from support.step_env import step_python

from airflow_ml_provider.operators.evaluation import ModelEvaluationOperator
from airflow_ml_provider.operators.infra_validation import InfraValidationOperator
from airflow_ml_provider.operators.step import MLStepOperator
from airflow_ml_provider.operators.validation import DataValidationOperator, SchemaInferenceOperator

POD_NAMESPACE = "ml-steps"
POD_IMAGE = "ml-steps:test"
PARAMS = {"data_uri": "", "schema_uri": "", "eval_uri": "", "model_uri": ""}
COMMON: dict[str, Any] = {"cache": False, "retries": 0}
PLACEMENTS: dict[str, dict[str, Any]] = {
    "worker": {"placement": "worker"},
    "interpreter": {"placement": "interpreter", "python": step_python()},
    # The versions carry a _SUCCESS marker: the default completion_marker check passes for pods too.
    "pod": {
        "placement": "pod",
        "image": POD_IMAGE,
        "namespace": POD_NAMESPACE,
        "deferrable": False,
        "poll_interval": 0.5,
    },
}


def _steps() -> None:
    infer = SchemaInferenceOperator(
        task_id="infer_schema", data_uri="{{ params.data_uri }}", schema_uri="{{ params.schema_uri }}"
    )
    validate = DataValidationOperator(
        task_id="validate", data_uri="{{ params.data_uri }}", schema_uri="{{ params.schema_uri }}"
    )
    describe = MLStepOperator(
        task_id="describe", step="describe_dataset", spec={"uri": "{{ params.data_uri }}"}
    )
    evaluate = ModelEvaluationOperator(
        task_id="evaluate",
        candidate_model_uri="{{ params.model_uri }}",
        data_uri="{{ params.eval_uri }}",
        eval_config=EVAL_CONFIG,
    )
    infra = InfraValidationOperator(
        task_id="infra_validate",
        model_uri="{{ params.model_uri }}",
        data_uri="{{ params.eval_uri }}",
        drop_columns=["label"],
        sample_rows=50,
        requests=10,
    )
    infer >> validate >> describe >> evaluate >> infra


for _placement, _arguments in PLACEMENTS.items():
    with DAG(
        dag_id=f"placement_{_placement}",
        schedule=None,
        params=PARAMS,
        default_args={**COMMON, **_arguments},
    ):
        _steps()
