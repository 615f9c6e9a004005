"""
DAGs of the reliability suite on a real cluster (``tests/integration/test_reliability_cluster.py``).

They live outside ``tests/dags`` so that ``load_dag`` in other tests never parses them.

* ``reliability_crash``: validate -> train (2 local workers) -> evaluate -> promote, each with one
  retry. Pause points (``steps_for_tests.pause_once``) hold each task's first try in the middle of
  its work, where the test SIGKILLs the task process: validation with its artifacts staged but not
  published, training with the model trained but not exported, evaluation with its outputs staged,
  promotion with the version registered and the alias move claimed but not made.
* ``reliability_concurrent``: evaluate a given candidate against the champion, then promote.
* ``reliability_watch``: one DAG on 20 assets, each watched by a ``DatasetVersionTrigger``.
* ``reliability_durable``: one step in a pod (the test's fake Kubernetes API plays it), waited for
  in the task process (not deferred), with one retry: the test SIGKILLs the task process once the
  pod has finished, and the retry must take the result of that Job (Airflow 3.3's task state
  store) instead of starting another.
"""

from __future__ import annotations

import functools
import operator
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import steps_for_tests
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Asset, AssetWatcher
from steps_for_tests import pause_once
from support.model_fixtures import EVAL_CONFIG

from airflow_ml_provider.operators.evaluation import ModelEvaluationOperator
from airflow_ml_provider.operators.promotion import PromoteModelOperator
from airflow_ml_provider.operators.step import MLStepOperator
from airflow_ml_provider.operators.training import DistributedTrainingOperator
from airflow_ml_provider.operators.validation import DataValidationOperator
from airflow_ml_provider.triggers.dataset import DatasetVersionTrigger

WATCH_ROOT = os.environ.get("ML_TEST_WATCH_ROOT", "/tmp/airflow-ml-provider/reliability-watch")
WATCHED_ASSETS = int(os.environ.get("ML_TEST_WATCHED_ASSETS", "20"))


def _install_pause_points() -> None:
    """
    Wrap promotion's claim with ``pause_once`` (a no-op outside ``reliability_crash``): promotion
    runs in the task process. The steps' pause points are installed in their own interpreter
    (``STEP_SITE``).
    """
    from airflow_ml_provider.hooks.mlflow import MlflowHook

    if getattr(MlflowHook.claim, "_paused", False):
        return
    claim = MlflowHook.claim

    def paused_claim(self: Any, key: str, *args: Any, **kwargs: Any) -> str:
        winner = claim(self, key, *args, **kwargs)
        if key.startswith("registry/"):
            pause_once("promote")  # version registered, alias move claimed, alias not moved
        return winner

    paused_claim._paused = True  # type: ignore[attr-defined]
    MlflowHook.claim = paused_claim  # type: ignore[method-assign]


_install_pause_points()

# Validation and evaluation run in the step environment ([ml_provider] step_python): their pause
# points load there, from this folder's sitecustomize.py, first on the steps' PYTHONPATH.
# (The test copies this file elsewhere: the tests folder is where steps_for_tests is.)
TESTS = Path(steps_for_tests.__file__).resolve().parent
STEP_SITE = {"PYTHONPATH": os.pathsep.join([str(TESTS / "cluster_dags" / "step_site"), str(TESTS)])}
PIPELINE_PARAMS = {"data_uri": "", "state_root": "", "model_name": ""}
RETRY = {"retries": 1, "retry_delay": timedelta(seconds=1)}

with DAG(
    dag_id="reliability_crash",
    schedule=None,
    render_template_as_native_obj=True,
    params=PIPELINE_PARAMS,
    default_args=RETRY,
):
    validate = DataValidationOperator(
        task_id="validate",
        data_uri="{{ params.data_uri }}",
        schema_uri="{{ params.state_root }}/schema/schema.pbtxt",
        on_anomaly="fail",
        step_env=STEP_SITE,
    )
    train = DistributedTrainingOperator(
        task_id="train",
        run_fn="steps_for_tests:pausing_run_fn",
        train_uri="{{ params.data_uri }}",
        hyperparameters={"epochs": 1, "batch_size": 256},
        strategy="multi_worker_mirrored",
        workers=2,
        seed=7,
        placement="interpreter",
    )
    evaluate = ModelEvaluationOperator(
        task_id="evaluate",
        candidate_model_uri="{{ ti.xcom_pull('train')['model_uri'] }}",
        data_uri="{{ params.data_uri }}",
        registered_model_name="{{ params.model_name }}",
        eval_config=EVAL_CONFIG,
        step_env=STEP_SITE,
    )
    promote = PromoteModelOperator(
        task_id="promote", model_name="{{ params.model_name }}", evaluation=evaluate.output
    )
    validate >> train >> evaluate >> promote

with DAG(
    dag_id="reliability_concurrent",
    schedule=None,
    render_template_as_native_obj=True,
    params={"candidate_uri": "", "data_uri": "", "model_name": ""},
    max_active_runs=8,
):
    evaluate = ModelEvaluationOperator(
        task_id="evaluate",
        candidate_model_uri="{{ params.candidate_uri }}",
        data_uri="{{ params.data_uri }}",
        registered_model_name="{{ params.model_name }}",
        eval_config=EVAL_CONFIG,
        on_not_blessed="skip",
    )
    PromoteModelOperator(task_id="promote", model_name="{{ params.model_name }}", evaluation=evaluate.output)

WATCHED = [
    Asset(
        f"reliability_data_{i:02d}",
        uri=f"file://{WATCH_ROOT}/data_{i:02d}",
        watchers=[
            AssetWatcher(
                name=f"reliability_watch_{i:02d}",
                trigger=DatasetVersionTrigger(
                    f"{WATCH_ROOT}/data_{i:02d}", pattern="version=*", poll_interval=1.0
                ),
            )
        ],
    )
    for i in range(WATCHED_ASSETS)
]

with DAG(
    dag_id="reliability_watch",
    schedule=functools.reduce(operator.or_, WATCHED),
    catchup=False,
    max_active_runs=4,
):
    EmptyOperator(task_id="consume")

with DAG(
    dag_id="reliability_durable",
    schedule=None,
    params={"payload": ""},
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
):
    MLStepOperator(
        task_id="echo_in_pod",
        step="echo",
        spec={"payload": "{{ params.payload }}"},
        placement="pod",
        image="registry.example.com/ml/airflow-ml-steps:test",
        namespace="ml-durable",
        deferrable=False,
        # The first poll sees the pod running; the next would come long after the test's kill.
        poll_interval=600,
        start_timeout=600,
    )
