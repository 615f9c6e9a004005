"""One placement vocabulary for every step operator: arguments, defaults from the config, old names."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.exceptions import AirflowProviderDeprecationWarning

from airflow_ml_provider.hooks.mlflow import MlflowSettings
from airflow_ml_provider.operators.evaluation import ModelEvaluationOperator
from airflow_ml_provider.operators.infra_validation import InfraValidationOperator
from airflow_ml_provider.operators.step import MLStepOperator
from airflow_ml_provider.operators.training import DistributedTrainingOperator
from airflow_ml_provider.operators.tuning import HyperparameterTuningOperator
from airflow_ml_provider.operators.validation import DataValidationOperator, SchemaInferenceOperator
from airflow_ml_provider.runners.kubernetes_objects import indexed_job

pytestmark = pytest.mark.unit

SETTINGS = MlflowSettings(
    tracking_uri="http://mlflow.ml:5000", registry_uri="http://mlflow.ml:5000", ui_url=None, username=None,
    password=None, token=None, insecure_tls=False, request_timeout=30.0, artifact_location=None,
)  # fmt: skip


def _operators(**kwargs: Any) -> list[MLStepOperator]:
    return [
        MLStepOperator(task_id="step", step="describe_dataset", spec={"data_uri": "/d"}, **kwargs),
        DataValidationOperator(task_id="validate", data_uri="/d", **kwargs),
        SchemaInferenceOperator(task_id="schema", data_uri="/d", schema_uri="/s.pbtxt", **kwargs),
        ModelEvaluationOperator(
            task_id="evaluate",
            candidate_model_uri="models:/m-1",
            eval_config={"x": 1},
            data_uri="/d",
            **kwargs,
        ),
        InfraValidationOperator(task_id="infra", model_uri="models:/m-1", data_uri="/d", **kwargs),
        DistributedTrainingOperator(task_id="train", run_fn="pkg.mod:run_fn", train_uri="/d", **kwargs),
        HyperparameterTuningOperator(
            task_id="tune", search_space={"lr": [0.1]}, objective_fn="pkg.mod:objective", **kwargs
        ),
    ]


@pytest.mark.parametrize("placement", ["worker", "interpreter", "pod"])
def test_every_operator_accepts_every_single_process_placement(placement: str) -> None:
    for operator in _operators(placement=placement, image="steps:1"):
        assert operator.placement_name == placement
        operator.check_placement()


def test_gangs_only_for_training_and_tuning_and_never_in_the_worker_process() -> None:
    for operator in _operators(placement="interpreter", workers=3):
        if operator.runs_as_gang:
            operator.check_placement()
        else:
            with pytest.raises(ValueError, match="this step runs in one process; leave workers=1"):
                operator.check_placement()
    train = DistributedTrainingOperator(
        task_id="train", run_fn="pkg.mod:run_fn", train_uri="/d", placement="worker", workers=2
    )
    with pytest.raises(ValueError, match="workers=2 needs placement='interpreter'"):
        train.check_placement()


def test_defaults_come_from_the_operator_then_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__ML_PROVIDER__STEP_PYTHON", raising=False)  # tests/conftest.py sets it
    validate = DataValidationOperator(task_id="v", data_uri="/d")
    train = DistributedTrainingOperator(task_id="t", run_fn="pkg.mod:run_fn", train_uri="/d")
    assert (validate.placement_name, train.placement_name) == ("worker", "interpreter")
    # The step environment alone: every step goes there (one setting).
    monkeypatch.setenv("AIRFLOW__ML_PROVIDER__STEP_PYTHON", "/opt/steps/bin/python")
    assert (validate.placement_name, train.placement_name) == ("interpreter", "interpreter")
    assert validate.resolved_python() == "/opt/steps/bin/python"
    monkeypatch.setenv("AIRFLOW__ML_PROVIDER__DEFAULT_PLACEMENT", "pod")
    monkeypatch.setenv("AIRFLOW__ML_PROVIDER__STEP_IMAGE", "registry/ml-steps:2")
    monkeypatch.setenv("AIRFLOW__ML_PROVIDER__STEP_NAMESPACE", "ml")
    monkeypatch.setenv("AIRFLOW__ML_PROVIDER__STEP_RESOURCES", '{"limits": {"memory": "1Gi"}}')
    monkeypatch.setenv("AIRFLOW__ML_PROVIDER__STEP_PYTHON", "/opt/steps/bin/python")
    assert (validate.placement_name, train.placement_name) == ("pod", "pod")
    validate.check_placement()  # the image comes from the config
    settings = validate.pod_settings(SETTINGS)
    assert (settings.image, settings.namespace) == ("registry/ml-steps:2", "ml")
    assert settings.resources == {"limits": {"memory": "1Gi"}}
    assert validate.resolved_python() == "/opt/steps/bin/python"
    # The DAG's own arguments win over the config.
    mine = DataValidationOperator(task_id="v", data_uri="/d", placement="worker", namespace="team")
    assert mine.placement_name == "worker" and mine.pod_settings(SETTINGS).namespace == "team"


def test_a_pod_needs_an_image_from_the_dag_or_the_config() -> None:
    operator = DataValidationOperator(task_id="v", data_uri="/d", placement="pod")
    with pytest.raises(ValueError, match=r"placement='pod' needs image=.*\[ml_provider\] step_image"):
        operator.check_placement()


@pytest.mark.parametrize(
    ("old", "placement"),
    [
        ({"runner": "in_process"}, "worker"),
        ({"runner": "python"}, "interpreter"),
        ({"launcher": "local"}, "interpreter"),
        ({"launcher": "kubernetes"}, "pod"),
    ],
)
def test_the_earlier_names_still_work_with_a_deprecation_warning(old: dict[str, str], placement: str) -> None:
    with pytest.warns(AirflowProviderDeprecationWarning, match=f"use placement='{placement}'"):
        operator = DistributedTrainingOperator(task_id="t", run_fn="pkg.mod:run_fn", train_uri="/d", **old)
    assert operator.placement_name == placement
    with pytest.warns(AirflowProviderDeprecationWarning, match="use step_env"):
        operator = DataValidationOperator(task_id="v", data_uri="/d", worker_env={"A": "1"})
    assert operator.step_env == {"A": "1"}


def test_placement_can_be_set_for_a_whole_dag_through_default_args() -> None:
    from airflow.sdk import DAG

    with DAG("placements", schedule=None, default_args={"placement": "pod", "image": "steps:1"}):
        operators = _operators()
    assert {op.placement_name for op in operators} == {"pod"}
    assert {op.image for op in operators} == {"steps:1"}


def test_a_single_step_pod_is_a_job_of_one_completion_without_a_gang_service() -> None:
    operator = DataValidationOperator(task_id="v", data_uri="s3://d/v1", placement="pod", image="steps:1")
    settings = operator.pod_settings(SETTINGS)
    assert settings.gang is False
    job = indexed_job(
        "v-1", "validate_data", {"data_uri": "s3://d/v1"}, settings, extra_args=["--mlflow-run", "r1"]
    )
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["completions"] == 1 and "subdomain" not in pod
    container = pod["containers"][0]
    assert "ports" not in container
    assert container["command"][-2:] == ["--mlflow-run", "r1"]
    gang = DistributedTrainingOperator(
        task_id="t", run_fn="pkg.mod:run_fn", train_uri="/d", placement="pod", image="steps:1", workers=2
    ).pod_settings(SETTINGS)
    assert gang.gang is True


def test_a_dag_file_importing_the_operators_loads_no_runner() -> None:
    """The runners load when a step runs, not when the DAG processor parses a DAG file."""
    import subprocess
    import sys

    code = (
        "import sys; import airflow_ml_provider.operators.training, airflow_ml_provider.operators.validation; "
        "print(sorted(m for m in sys.modules if m.startswith('airflow_ml_provider.runners')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
