"""Every operator that reads a dataset version refuses an incomplete one; completion_marker=None opts out."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support.dataset_fixtures import land

from airflow_ml_provider.exceptions import DatasetVersionIncomplete
from airflow_ml_provider.operators.evaluation import ModelEvaluationOperator
from airflow_ml_provider.operators.infra_validation import InfraValidationOperator
from airflow_ml_provider.operators.promotion import PromoteModelOperator
from airflow_ml_provider.operators.training import DistributedTrainingOperator
from airflow_ml_provider.operators.tuning import HyperparameterTuningOperator
from airflow_ml_provider.operators.validation import DataValidationOperator, SchemaInferenceOperator

pytestmark = pytest.mark.unit

SPACE = {"lr": {"type": "float", "low": 0.01, "high": 0.1}}
OPERATORS: list[tuple[type, dict[str, Any]]] = [
    (DataValidationOperator, {}),
    (SchemaInferenceOperator, {"schema_uri": "/s/schema.pbtxt"}),
    (DistributedTrainingOperator, {"run_fn": "m:f"}),
    (HyperparameterTuningOperator, {"run_fn": "m:f", "metric": "val_auc", "search_space": SPACE}),
    (ModelEvaluationOperator, {"candidate_model_uri": "models:/m/1", "eval_config": {"x": 1}}),
    (InfraValidationOperator, {"model_uri": "models:/m/1"}),
]


def _context(conf: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"dag_run": SimpleNamespace(run_id="manual__1", conf=conf or {}), "triggering_asset_events": {}}


@pytest.mark.parametrize(("operator_class", "kwargs"), OPERATORS, ids=lambda v: getattr(v, "__name__", ""))
def test_every_dataset_input_is_checked(tmp_path: Path, operator_class: type, kwargs: dict[str, Any]):
    incomplete = land(tmp_path, "0002", marker=False)
    assert operator_class.dataset_inputs
    for name in operator_class.dataset_inputs:
        inputs = {other: str(land(tmp_path, "0001")) for other in operator_class.dataset_inputs}
        inputs[name] = str(incomplete)
        task = operator_class(task_id="t", **kwargs, **inputs)
        with pytest.raises(DatasetVersionIncomplete, match=f"Task 't': {name} {incomplete}: dataset version"):
            task.check_dataset_inputs(_context())
        operator_class(task_id="t", completion_marker=None, **kwargs, **inputs).check_dataset_inputs(
            _context()
        )


def test_the_opt_out_is_dag_wide_through_default_args(tmp_path: Path):
    from airflow.sdk import DAG

    incomplete = str(land(tmp_path, "0001", marker=False))
    with DAG("d", schedule=None, default_args={"completion_marker": None}):
        task = DataValidationOperator(task_id="validate", data_uri=incomplete)
    assert task.completion_marker is None
    task.check_dataset_inputs(_context())
    with DAG("e", schedule=None, default_args={"completion_marker": "_DONE"}):
        custom = DistributedTrainingOperator(task_id="train", run_fn="m:f", train_uri=incomplete)
    with pytest.raises(DatasetVersionIncomplete, match="'_DONE'"):
        custom.check_dataset_inputs(_context())


def test_operators_that_read_no_dataset_version_check_nothing():
    assert PromoteModelOperator.dataset_inputs == ()
