"""DistributedTrainingOperator: argument checks, the spec, and the Kubernetes example's manifests (no TensorFlow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from airflow_ml_provider.hooks.mlflow import MlflowSettings
from airflow_ml_provider.operators.training import DistributedTrainingOperator

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).parents[3] / "dags_examples"


def _settings(uri: str = "http://mlflow.ml:5000") -> MlflowSettings:
    return MlflowSettings(
        tracking_uri=uri, registry_uri=uri, ui_url=None, username=None, password=None,
        token="secret-token", insecure_tls=False, request_timeout=30.0, artifact_location=None,
    )  # fmt: skip


def _operator(**kwargs: Any) -> DistributedTrainingOperator:
    base: dict[str, Any] = {"task_id": "train", "run_fn": "pkg.mod:run_fn", "train_uri": "/data/v1"}
    return DistributedTrainingOperator(**{**base, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"launcher": "slurm"}, ValueError, "launcher='slurm' is not one of local, kubernetes"),
        ({"workers": 0}, ValueError, "workers must be an int in 1..256, got 0"),
        ({"workers": "2"}, ValueError, "workers must be an int"),
        ({"strategy": "tpu"}, ValueError, "strategy='tpu' is not one of"),
        (
            {"workers": 2, "strategy": "mirrored"},
            ValueError,
            "strategy='mirrored' runs in one process but workers=2",
        ),
        ({"run_fn": "train.py"}, ValueError, "run_fn must be 'package.module:function'"),
        ({"run_fn": "pkg.mod:"}, ValueError, "Unknown step"),
        ({"train_uri": ""}, ValueError, "train_uri is empty"),
        ({"hyperparameters": "{'epochs': 3}"}, TypeError, "hyperparameters must be a dict"),
        ({"launcher": "kubernetes"}, ValueError, "launcher='kubernetes' needs image="),
    ],
)
def test_bad_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        _operator(**kwargs)._check_arguments()


def test_strategy_defaults_to_the_gang_size():
    assert _operator().strategy_name == "one_device"
    assert _operator(workers=3).strategy_name == "multi_worker_mirrored"
    _operator(workers=3)._check_arguments()


def test_pods_refuse_a_tracking_store_they_cannot_reach():
    operator = _operator(launcher="kubernetes", image="img:1")
    with pytest.raises(ValueError, match="the pods cannot reach the MLflow store 'sqlite:///tmp/m.db'"):
        operator.pod_settings(_settings("sqlite:///tmp/m.db"))


def test_pod_settings_carry_no_credentials_only_the_secret_reference():
    operator = _operator(
        launcher="kubernetes", image="img:1", mlflow_secret="mlflow-creds", worker_env={"A": "1"}
    )
    settings = operator.pod_settings(_settings())
    assert settings.env == {
        "MLFLOW_TRACKING_URI": "http://mlflow.ml:5000",
        "MLFLOW_REGISTRY_URI": "http://mlflow.ml:5000",
        "A": "1",
    }
    assert "secret-token" not in repr(settings)
    assert settings.env_from_secrets == ["mlflow-creds"]


def test_kubernetes_example_parses_and_builds_valid_manifests():
    from airflow.dag_processing.dagbag import DagBag
    from kubernetes.client import ApiClient, V1Job, V1Service
    from support.pod_player import KUBERNETES_VERSIONS, check_against_openapi_schema

    from airflow_ml_provider.runners.kubernetes_objects import gang_name, headless_service, indexed_job

    bag = DagBag(dag_folder=str(EXAMPLES / "example_distributed_training_kubernetes.py"))
    assert not bag.import_errors, bag.import_errors
    task = bag.dags["example_distributed_training_kubernetes"].get_task("train")
    assert task.deferrable is True and task.launcher == "kubernetes"
    task._check_arguments()
    settings = task.pod_settings(_settings())
    name = gang_name("example_distributed_training_kubernetes", "manual__2026-01-01T00:00:00+00:00", "train")
    spec = {"run_fn": task.run_fn, "train_uri": "s3://d/v7", "strategy": task.strategy_name}
    client = ApiClient()
    job = client.sanitize_for_serialization(
        client._ApiClient__deserialize(indexed_job(name, "train_model", spec, settings), V1Job)
    )
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["backoffLimitPerIndex"] == 3
    assert "backoffLimit" not in job["spec"] and job["spec"]["podReplacementPolicy"] == "Failed"
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ml-training" and pod["nodeSelector"] == {"pool": "training"}
    container = pod["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "8Gi"}
    assert container["envFrom"] == [{"secretRef": {"name": "mlflow-credentials"}}]
    assert container["securityContext"]["runAsNonRoot"] is True
    service = client._ApiClient__deserialize(headless_service(name, settings), V1Service)
    assert service.spec.cluster_ip == "None" and service.metadata.namespace == "ml-training"
    # Kueue, the failure policy and the priority class, valid in every supported Kubernetes
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert pod["priorityClassName"] == "ml-training"
    assert [r["action"] for r in job["spec"]["podFailurePolicy"]["rules"]] == ["Ignore", "FailJob"]
    assert task.checkpoint_every == "epoch" and task.admission_timeout == 4 * 3600
    for version in KUBERNETES_VERSIONS:
        check_against_openapi_schema(indexed_job(name, "train_model", spec, settings), version)
