"""The gang's Indexed Job and headless Service, round-tripped through the Kubernetes client's models."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_ml_provider.ml.exit_codes import APPLICATION_ERROR_EXIT_CODES, EXIT_RETRY
from airflow_ml_provider.ml.training.cluster import tf_config_from_pod_env
from airflow_ml_provider.runners.kubernetes_objects import (
    DEFAULT_RESOURCES,
    LABEL_GANG,
    LABEL_KUEUE_QUEUE,
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
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
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
        ({"worker_restarts": -1}, r"worker_restarts must be an int in 0\.\.20"),
        ({"worker_restarts": 21}, r"worker_restarts must be an int in 0\.\.20"),
        ({"worker_restarts": "3"}, r"worker_restarts must be an int in 0\.\.20"),
        ({"worker_restarts": True}, r"worker_restarts must be an int in 0\.\.20"),
        ({"gpus": -1}, "gpus must be an int >= 0"),
        ({"gpus": 1.5}, "gpus must be an int >= 0"),
        ({"gpus": "2"}, "gpus must be an int >= 0"),
        ({"gpu_resource": "gpu"}, "gpu_resource must name an extended resource with its domain"),
        ({"gpu_resource": ""}, "gpu_resource must name an extended resource with its domain"),
        ({"gpus": 2, "resources": {"limits": {"nvidia.com/gpu": "1"}}}, "give the count once"),
        ({"queue_name": "Team_Queue"}, "queue_name must name a Kueue LocalQueue"),
        ({"queue_name": "q" * 64}, "queue_name must name a Kueue LocalQueue"),
        ({"queue_name": "team..a"}, "queue_name must name a Kueue LocalQueue"),
        ({"priority_class_name": "High Priority"}, "priority_class_name must name a PriorityClass"),
        ({"priority_class_name": 7}, "priority_class_name must name a PriorityClass"),
        ({"affinity": {"nodeAffinty": {}}}, "affinity must be a dict in Kubernetes' form"),
        ({"affinity": [{"nodeAffinity": {}}]}, "affinity must be a dict in Kubernetes' form"),
        ({"node_selector": {"pool": 1}}, "node_selector must be a dict of node label names"),
        ({"node_selector": ["pool=training"]}, "node_selector must be a dict of node label names"),
        ({"tolerations": {"key": "gpu"}}, "tolerations must be a list of dicts"),
        ({"resources": {"limits": ["cpu"]}}, "container resources must be a dict"),
    ],
)
def test_bad_settings_are_named(change: dict[str, Any], message: str) -> None:
    settings = GangPodSettings(**{**SETTINGS.__dict__, **change})
    with pytest.raises(ValueError, match=message):
        indexed_job("train-abc", "train_model", {}, settings)


def test_oversized_spec_is_refused() -> None:
    with pytest.raises(ValueError, match="Pass large inputs by URI"):
        indexed_job("train-abc", "train_model", {"blob": "x" * 300_000}, SETTINGS)


def test_a_gang_retries_each_worker_but_fails_at_once_on_an_application_error() -> None:
    job = indexed_job("train-abc", "train_model", {}, SETTINGS)
    spec = job["spec"]
    # A replacement only once the old pod is gone: TensorFlow refuses two tasks of one index.
    assert spec["podReplacementPolicy"] == "Failed"
    assert (spec["backoffLimitPerIndex"], spec["maxFailedIndexes"]) == (3, 0)
    assert "backoffLimit" not in spec  # Kubernetes takes no limit on the total with backoffLimitPerIndex
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # what both policies require
    disrupted, application_error = spec["podFailurePolicy"]["rules"]
    assert disrupted == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    (container,) = spec["template"]["spec"]["containers"]
    assert application_error == {
        "action": "FailJob",
        "onExitCodes": {"containerName": container["name"], "operator": "In", "values": [1, 2]},
    }
    assert application_error["onExitCodes"]["values"] == sorted(APPLICATION_ERROR_EXIT_CODES)
    assert EXIT_RETRY not in application_error["onExitCodes"]["values"]  # a lost peer retries the index


@pytest.mark.parametrize("restarts", [0, 20])
def test_worker_restarts_is_the_limit_of_each_index(restarts: int) -> None:
    settings = GangPodSettings(image="img:1", worker_restarts=restarts)
    assert indexed_job("train-abc", "train_model", {}, settings)["spec"]["backoffLimitPerIndex"] == restarts


def test_a_single_step_job_fails_with_its_pod_and_has_no_per_index_retries() -> None:
    settings = GangPodSettings(image="img:1", workers=1, gang=False, worker_restarts=5)
    spec = indexed_job("validate-abc", "validate_data", {}, settings)["spec"]
    assert spec["backoffLimit"] == 0
    assert not {"backoffLimitPerIndex", "maxFailedIndexes", "podFailurePolicy", "podReplacementPolicy"} & set(
        spec
    )


def test_a_kueue_queue_labels_the_job_and_creates_it_suspended() -> None:
    queued = indexed_job("train-abc", "train_model", {}, GangPodSettings(image="img:1", queue_name="team-a"))
    assert queued["metadata"]["labels"][LABEL_KUEUE_QUEUE] == "team-a"
    assert queued["spec"]["suspend"] is True
    # Kueue reads the Job's label; the pods carry the gang's labels only.
    assert LABEL_KUEUE_QUEUE not in queued["spec"]["template"]["metadata"]["labels"]
    plain = indexed_job("train-abc", "train_model", {}, GangPodSettings(image="img:1"))
    assert "suspend" not in plain["spec"] and LABEL_KUEUE_QUEUE not in plain["metadata"]["labels"]


def test_gpus_are_limits_and_requests_alike_beside_the_dags_cpu_and_memory() -> None:
    job = indexed_job("train-abc", "train_model", {}, GangPodSettings(**{**SETTINGS.__dict__, "gpus": 2}))
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "2"},
        "limits": {"memory": "8Gi", "nvidia.com/gpu": "2"},
    }
    assert SETTINGS.resources == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}


def test_gpus_with_the_default_resources_leave_the_defaults_unchanged() -> None:
    before = json.dumps(DEFAULT_RESOURCES)
    job = indexed_job(
        "t-abc", "train_model", {}, GangPodSettings(image="img:1", gpus=1, gpu_resource="amd.com/gpu")
    )
    resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {**DEFAULT_RESOURCES["limits"], "amd.com/gpu": "1"}
    assert resources["requests"] == {**DEFAULT_RESOURCES["requests"], "amd.com/gpu": "1"}
    assert json.dumps(DEFAULT_RESOURCES) == before
    # No other resources asked for ({}): the accelerators only.
    bare = indexed_job("t-abc", "train_model", {}, GangPodSettings(image="img:1", resources={}, gpus=4))
    assert bare["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "limits": {"nvidia.com/gpu": "4"},
        "requests": {"nvidia.com/gpu": "4"},
    }
    # The same count given both ways is no conflict.
    same = GangPodSettings(image="img:1", resources={"limits": {"nvidia.com/gpu": 2}}, gpus=2)
    limits = indexed_job("t-abc", "train_model", {}, same)["spec"]["template"]["spec"]["containers"][0]
    assert limits["resources"]["limits"] == {"nvidia.com/gpu": "2"}


def test_affinity_and_priority_class_go_to_the_pods() -> None:
    affinity = {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": {LABEL_GANG: "train-abc"}},
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        }
    }
    settings = GangPodSettings(image="img:1", affinity=affinity, priority_class_name="ml-high")
    pod = indexed_job("train-abc", "train_model", {}, settings)["spec"]["template"]["spec"]
    assert pod["affinity"] == affinity and pod["affinity"] is not affinity
    assert pod["priorityClassName"] == "ml-high"
    plain = indexed_job("train-abc", "train_model", {}, GangPodSettings(image="img:1"))["spec"]["template"][
        "spec"
    ]
    assert "affinity" not in plain and "priorityClassName" not in plain
