"""TF_CONFIG for local worker processes and for the pods of a Kubernetes Indexed Job."""

from __future__ import annotations

import json
import socket

import pytest

from airflow_ml_provider.ml.training.cluster import (
    WorkerRole,
    indexed_job_cluster,
    local_cluster,
    role_from_tf_config,
    tf_config,
    tf_config_from_pod_env,
    worker_environments,
)

pytestmark = pytest.mark.unit

POD_ENV = {
    "AIRFLOW_ML_JOB_NAME": "train-churn-7f3a",
    "AIRFLOW_ML_SERVICE": "train-churn-7f3a",
    "AIRFLOW_ML_NAMESPACE": "ml",
    "AIRFLOW_ML_WORKERS": "3",
}


def test_local_cluster_gives_distinct_bindable_ports():
    cluster = local_cluster(3)
    ports = [int(address.rsplit(":", 1)[1]) for address in cluster]
    assert len(set(ports)) == 3 and all(a.startswith("127.0.0.1:") for a in cluster)
    for port in ports:  # free right after: a worker can bind it
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_worker_environments_index_each_process():
    cluster = ["127.0.0.1:1001", "127.0.0.1:1002"]
    envs = [json.loads(e["TF_CONFIG"]) for e in worker_environments(cluster)]
    assert envs == [
        {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": 0}},
        {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": 1}},
    ]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_pod_derives_its_tf_config_from_the_completion_index(index: int):
    config = tf_config_from_pod_env({**POD_ENV, "JOB_COMPLETION_INDEX": str(index)})
    assert config["cluster"]["worker"] == [
        f"train-churn-7f3a-{i}.train-churn-7f3a.ml.svc:2222" for i in range(3)
    ]
    assert config["task"] == {"type": "worker", "index": index}
    role = role_from_tf_config(json.dumps(config))
    assert role == WorkerRole(index=index, workers=3) and role.is_chief == (index == 0)


def test_pod_port_override():
    config = tf_config_from_pod_env({**POD_ENV, "JOB_COMPLETION_INDEX": "0", "AIRFLOW_ML_PORT": "9000"})
    assert config["cluster"]["worker"][0].endswith(":9000")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({k: v for k, v in POD_ENV.items() if k != "AIRFLOW_ML_WORKERS"}, "AIRFLOW_ML_WORKERS is not set"),
        ({**POD_ENV}, "JOB_COMPLETION_INDEX is not set"),
        ({**POD_ENV, "JOB_COMPLETION_INDEX": "x"}, "must be an integer"),
        ({**POD_ENV, "JOB_COMPLETION_INDEX": "3"}, r"index must be in 0\.\.2"),
        ({**POD_ENV, "JOB_COMPLETION_INDEX": "0", "AIRFLOW_ML_NAMESPACE": ""}, "AIRFLOW_ML_NAMESPACE"),
        ({**POD_ENV, "JOB_COMPLETION_INDEX": "0", "AIRFLOW_ML_SERVICE": "Bad_Name"}, "DNS label"),
        ({**POD_ENV, "JOB_COMPLETION_INDEX": "0", "AIRFLOW_ML_WORKERS": "0"}, r"in 1\.\.256"),
    ],
)
def test_bad_pod_environment_is_named(env: dict[str, str], message: str):
    with pytest.raises(ValueError, match=message):
        tf_config_from_pod_env(env)


@pytest.mark.parametrize("workers", [0, -1, 257, True, "2"])
def test_bad_worker_counts(workers):
    with pytest.raises(ValueError, match="number of workers"):
        local_cluster(workers)


def test_bad_port_and_index():
    with pytest.raises(ValueError, match="port must be in"):
        indexed_job_cluster("j", "s", "ns", 2, port=70000)
    with pytest.raises(ValueError, match="no workers"):
        tf_config([], 0)


def test_role_without_tf_config_is_a_lone_chief_and_bad_json_is_named():
    assert role_from_tf_config(None) == WorkerRole(index=0, workers=1)
    assert role_from_tf_config(None).is_chief
    with pytest.raises(ValueError, match="TF_CONFIG is not valid"):
        role_from_tf_config('{"cluster": {}}')
