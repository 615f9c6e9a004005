"""
Every option of the step's Job, validated as Kubernetes would take it: against the strict OpenAPI
schema (no unknown field, every type right) of each release in ``KUBERNETES_VERSIONS`` (the oldest
supported and the newest ``kubernetes-validate`` ships), and round-tripped through the client's models.
"""

from __future__ import annotations

from typing import Any

import pytest
from support.pod_player import (
    KUBERNETES_VERSIONS,
    check_against_api_models,
    check_against_openapi_schema,
    check_manifest,
)

from airflow_ml_provider.runners.kubernetes_objects import (
    LABEL_GANG,
    GangPodSettings,
    headless_service,
    indexed_job,
)

pytestmark = pytest.mark.unit

IMAGE = "registry.example.com/ml/steps:0.1.0"
NODE_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["A100"]}
                    ]
                }
            ]
        }
    },
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
    },
}
# One Job per option (and one with all of them), each as the launcher would post it.
OPTIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "single step": {"workers": 1, "gang": False},
    "single step in a queue with a gpu": {"workers": 1, "gang": False, "queue_name": "team-a", "gpus": 1},
    "no worker restarts": {"worker_restarts": 0},
    "most worker restarts": {"worker_restarts": 20},
    "kueue": {"queue_name": "team-a.training"},
    "gpus over default resources": {"gpus": 2},
    "gpus alone": {"gpus": 8, "resources": {}, "gpu_resource": "amd.com/gpu"},
    "gpus beside cpu and memory": {
        "gpus": 1,
        "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "32Gi"}},
    },
    "affinity": {"affinity": NODE_AFFINITY},
    "priority class": {"priority_class_name": "ml-training-high"},
    "node selector and tolerations": {
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"},
        "tolerations": [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            {
                "key": "spot",
                "operator": "Equal",
                "value": "true",
                "effect": "NoExecute",
                "tolerationSeconds": 60,
            },
        ],
    },
    "everything": {
        "workers": 4,
        "worker_restarts": 5,
        "queue_name": "team-a",
        "gpus": 2,
        "affinity": NODE_AFFINITY,
        "priority_class_name": "ml-training-high",
        "node_selector": {"pool": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "service_account": "ml-trainer",
        "env": {"MLFLOW_TRACKING_URI": "http://mlflow.ml:5000"},
        "env_from_secrets": ["mlflow-credentials"],
        "labels": {"team": "churn"},
        "image_pull_secrets": ["regcred"],
        "active_deadline_seconds": 86400,
        "ttl_seconds_after_finished": 3600,
    },
}


def _job(option: str) -> dict[str, Any]:
    settings = GangPodSettings(image=IMAGE, namespace="ml", **OPTIONS[option])
    return indexed_job("train-abc", "train_model", {"epochs": 3}, settings, extra_args=["--mlflow-run", "r1"])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_options_job_satisfies_the_openapi_schema(option: str, version: str) -> None:
    check_against_openapi_schema(_job(option), version)


@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_options_job_survives_the_client_models(option: str) -> None:
    check_against_api_models(_job(option), "V1Job")


def test_the_gangs_service_satisfies_every_schema() -> None:
    settings = GangPodSettings(image=IMAGE, namespace="ml", **OPTIONS["everything"])
    check_manifest(headless_service("train-abc", settings), "V1Service")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    ("where", "field", "value"),
    [
        # The schema is strict: a misspelt policy field, or one of the wrong type, is refused; so
        # passing means the release knows backoffLimitPerIndex, podFailurePolicy ... as sent.
        ("spec", "backoffLimitPerIndx", 3),
        ("spec", "backoffLimitPerIndex", "3"),
        ("spec", "maxFailedIndexes", "0"),
        ("spec", "podFailurePolicy", {"rules": [{"action": "Ignore", "onPodCondition": []}]}),
        ("spec", "podReplacementPolicy", 1),
        ("spec", "suspend", "true"),
        ("pod", "priorityClass", "ml-training-high"),
    ],
)
def test_the_schema_check_is_strict(where: str, field: str, value: Any, version: str) -> None:
    job = _job("everything")
    target = job["spec"] if where == "spec" else job["spec"]["template"]["spec"]
    target[field] = value
    with pytest.raises(AssertionError, match=f"Kubernetes {version}"):
        check_against_openapi_schema(job, version)


def test_the_oldest_schema_knows_the_gangs_retry_fields() -> None:
    """The per-index retries and both policies are in Kubernetes 1.30's Job (beta there, on by default)."""
    import json
    from pathlib import Path

    import kubernetes_validate

    folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    oldest = min(KUBERNETES_VERSIONS, key=lambda v: tuple(int(p) for p in v.split(".")))
    schema = json.loads((folder / f"v{oldest}-local-strict" / "jobspec-batch-v1.json").read_text())
    fields = {
        "backoffLimitPerIndex",
        "maxFailedIndexes",
        "podFailurePolicy",
        "podReplacementPolicy",
        "suspend",
    }
    assert fields <= set(schema["properties"])
    assert set(_job("everything")["spec"]) - set(schema["properties"]) == set()


@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_options_job_meets_the_api_servers_own_rules(option: str) -> None:
    """What the API server checks beyond the schema (pkg/apis/batch/validation), as the field docs state."""
    job = _job(option)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    names = {c["name"] for c in pod["containers"]}
    if "backoffLimitPerIndex" in spec or "podFailurePolicy" in spec:
        assert spec["completionMode"] == "Indexed" and pod["restartPolicy"] == "Never"
    if "maxFailedIndexes" in spec:
        assert "backoffLimitPerIndex" in spec and 0 <= spec["maxFailedIndexes"] <= spec["completions"]
    if "podFailurePolicy" in spec:
        assert spec["podReplacementPolicy"] == "Failed"  # the only value allowed with a pod failure policy
        for rule in spec["podFailurePolicy"]["rules"]:
            assert ("onExitCodes" in rule) != ("onPodConditions" in rule)
            codes = rule.get("onExitCodes")
            if codes:
                assert codes["containerName"] in names
                assert codes["values"] == sorted(set(codes["values"])) and 0 not in codes["values"]
    for container in pod["containers"]:
        resources = container.get("resources", {})
        extended = {k for part in resources.values() for k in part if "/" in k}
        for name in extended:  # an extended resource is never overcommitted
            assert resources["limits"][name] == resources["requests"][name]
    for value in job["metadata"]["labels"].values():
        assert len(value) <= 63
