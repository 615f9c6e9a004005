"""The gang's Indexed Job and headless Service, round-tripped through the Kubernetes client's models."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_ml_provider.ml.training.cluster import tf_config_from_pod_env
from airflow_ml_provider.runners.kubernetes_objects import (
    DEFAULT_RESOURCES,
    LABEL_GANG,
    SPEC_ANNOTATION,
    GangPodSettings,
    gang_name,
    headless_service,
    indexed_job,
)

pytestmark = pytest.mark.unit


def round_trip(manifest: dict[str, Any], kind: str) -> dict[str, Any]:
    """Deserialize into the client's model (which checks names and required fields) and back."""
    from kubernetes.client import ApiClient

    class Response:
        data = json.dumps(manifest)

    client = ApiClient()
    model = client.deserialize(Response(), kind)
    return client.sanitize_for_serialization(model)


SETTINGS = GangPodSettings(
    image="registry.example.com/ml/steps:0.1.0",
    namespace="ml",
    workers=3,
    resources={"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
    node_selector={"pool": "training"},
    tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    service_account="ml-trainer",
    env={"MLFLOW_TRACKING_URI": "http://mlflow.ml:5000"},
    env_from_secrets=["mlflow-credentials", "s3.credentials"],
    image_pull_secrets=["regcred"],
    active_deadline_seconds=3600,
    ttl_seconds_after_finished=7200,
)


def test_job_survives_the_client_models_unchanged() -> None:
    name = gang_name("retrain", "asset_triggered__2026-11-23", "train")
    job = indexed_job(name, "train_model", {"epochs": 3}, SETTINGS)
    assert round_trip(job, "V1Job") == job  # no misspelt or unknown field was dropped


def test_service_survives_the_client_models_unchanged() -> None:
    service = headless_service("train-abc", SETTINGS)
    assert round_trip(service, "V1Service") == service


def test_job_fields() -> None:
    job = indexed_job("train-abc", "train_model", {"epochs": 3, "lr": 0.01}, SETTINGS)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (
        "Indexed", 3, 3, 0,
    )  # fmt: skip
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "train-abc" and pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "ml-trainer" and pod["nodeSelector"] == {"pool": "training"}
    (container,) = pod["containers"]
    assert container["command"][:4] == ["python", "-m", "airflow_ml_provider.ml", "train_model"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["AIRFLOW_ML_WORKERS"] == "3" and env["AIRFLOW_ML_NAMESPACE"] == "ml"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.ml:5000"
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    annotations = spec["template"]["metadata"]["annotations"]
    assert json.loads(annotations[SPEC_ANNOTATION]) == {"epochs": 3, "lr": 0.01}
    assert container["resources"]["limits"] == {"memory": "8Gi"}
    assert container["envFrom"] == [
        {"secretRef": {"name": "mlflow-credentials"}},
        {"secretRef": {"name": "s3.credentials"}},
    ]
    assert spec["ttlSecondsAfterFinished"] == 7200 and spec["activeDeadlineSeconds"] == 3600


def test_secrets_and_ttl_survive_the_client_models() -> None:
    from kubernetes.client import ApiClient

    job = indexed_job("train-abc", "train_model", {}, SETTINGS)

    class Response:
        data = json.dumps(job)

    model = ApiClient().deserialize(Response(), "V1Job")
    assert model.spec.ttl_seconds_after_finished == 7200
    (container,) = model.spec.template.spec.containers
    assert [e.secret_ref.name for e in container.env_from] == ["mlflow-credentials", "s3.credentials"]
    assert all(e.config_map_ref is None and e.prefix is None for e in container.env_from)


def test_defaults_keep_a_finished_job_for_a_day_and_add_no_env_from() -> None:
    job = indexed_job("train-abc", "train_model", {}, GangPodSettings(image="img:1"))
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400
    assert "envFrom" not in container and "activeDeadlineSeconds" not in job["spec"]
    assert round_trip(job, "V1Job") == job


def test_pods_run_bounded_non_root_and_without_privilege_escalation_by_default() -> None:
    job = indexed_job("train-abc", "train_model", {}, GangPodSettings(image="img:1"))
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"] == DEFAULT_RESOURCES
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert round_trip(job, "V1Job") == job
    # A DAG that asks for no resources at all says so with {}.
    unbounded = indexed_job("train-abc", "train_model", {}, GangPodSettings(image="img:1", resources={}))
    assert "resources" not in unbounded["spec"]["template"]["spec"]["containers"][0]


def test_ttl_none_keeps_the_job_until_deleted() -> None:
    settings = GangPodSettings(image="img:1", ttl_seconds_after_finished=None)
    assert "ttlSecondsAfterFinished" not in indexed_job("train-abc", "train_model", {}, settings)["spec"]


def test_ttl_zero_is_kept() -> None:
    settings = GangPodSettings(image="img:1", ttl_seconds_after_finished=0)
    assert indexed_job("train-abc", "train_model", {}, settings)["spec"]["ttlSecondsAfterFinished"] == 0


def test_service_selects_exactly_the_gangs_pods() -> None:
    job = indexed_job("train-abc", "train_model", {}, SETTINGS)
    service = headless_service("train-abc", SETTINGS)
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {LABEL_GANG: "train-abc"}
    assert all(pod_labels[k] == v for k, v in service["spec"]["selector"].items())
    assert service["spec"]["publishNotReadyAddresses"] is True


@pytest.mark.parametrize("index", [0, 1, 2])
def test_each_pod_derives_its_tf_config_from_the_job_env(index: int) -> None:
    job = indexed_job("train-abc", "train_model", {}, SETTINGS)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    config = tf_config_from_pod_env({**env, "JOB_COMPLETION_INDEX": str(index)})
    assert config["cluster"]["worker"] == [f"train-abc-{i}.train-abc.ml.svc:2222" for i in range(3)]
    assert config["task"]["index"] == index


def test_gang_name_is_deterministic_dns_safe_and_short() -> None:
    a = gang_name("dag", "manual__2026-11-23T10:00:00+00:00", "Train_Model.Big" * 10, 3)
    assert a == gang_name("dag", "manual__2026-11-23T10:00:00+00:00", "Train_Model.Big" * 10, 3)
    assert a != gang_name("dag", "manual__2026-11-23T10:00:00+00:00", "Train_Model.Big" * 10, 4)
    assert len(a) <= 52 and len(f"{a}-255") <= 63
    assert all(c.isalnum() and c.islower() or c == "-" or c.isdigit() for c in a)
    assert not a.startswith("-") and not a.endswith("-")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": ""}, "image must name"),
        ({"workers": 0}, "workers must be an int"),
        ({"run_as_user": 0}, "non-root uid"),
        ({"ttl_seconds_after_finished": -1}, "ttl_seconds_after_finished must be an int >= 0"),
        ({"ttl_seconds_after_finished": "1d"}, "ttl_seconds_after_finished must be an int >= 0"),
        ({"ttl_seconds_after_finished": True}, "ttl_seconds_after_finished must be an int >= 0"),
        ({"env_from_secrets": "mlflow-credentials"}, "env_from_secrets must be a list of Secret names"),
        ({"env_from_secrets": ["MLflow_Creds"]}, "env_from_secrets must be a list of Secret names"),
        ({"env_from_secrets": [""]}, "env_from_secrets must be a list of Secret names"),
    ],
)
def test_bad_settings_are_named(change: dict[str, Any], message: str) -> None:
    settings = GangPodSettings(**{**SETTINGS.__dict__, **change})
    with pytest.raises(ValueError, match=message):
        indexed_job("train-abc", "train_model", {}, settings)


def test_oversized_spec_is_refused() -> None:
    with pytest.raises(ValueError, match="Pass large inputs by URI"):
        indexed_job("train-abc", "train_model", {"blob": "x" * 300_000}, SETTINGS)
