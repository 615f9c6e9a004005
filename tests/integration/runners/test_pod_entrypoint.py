"""
The training pods' entrypoint, run for real as local processes with the environment the pods get.

There is no Kubernetes cluster here. Each process gets the container's command and environment
exactly as the Indexed Job manifest has them, plus what Kubernetes itself adds
(``JOB_COMPLETION_INDEX``). Two substitutions only: the spec file the downward API would mount is
written to a temporary file, and ``AIRFLOW_ML_WORKER_ADDRESSES`` maps the pods' DNS names (which
do not resolve here) to localhost ports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_ml_provider.ml.datagen import generate_dataset
from airflow_ml_provider.ml.training.cluster import ENV_WORKER_ADDRESSES, local_cluster
from airflow_ml_provider.runners.kubernetes_objects import (
    SPEC_ANNOTATION,
    SPEC_DIR,
    SPEC_FILE,
    GangPodSettings,
    indexed_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_pods_train_as_a_gang_and_only_the_chief_logs(mlflow_server, mlflow_client, tmp_path):
    data = generate_dataset({"root": str(tmp_path / "data"), "versions": 1, "rows": 3000})
    experiment = mlflow_client.create_experiment("pod-entrypoint")
    run = mlflow_client.create_run(experiment)
    spec = {
        "run_fn": "airflow_ml_provider.ml.training.demo:run_fn",
        "train_uri": data["versions"][0]["uri"],
        "strategy": "multi_worker_mirrored",
        "hyperparameters": {"epochs": 2, "batch_size": 128},
        "seed": 3,
        "mlflow": {"run_id": run.info.run_id},
    }
    settings = GangPodSettings(
        image="registry.example/ml:1",
        namespace="ml",
        workers=2,
        env={"MLFLOW_TRACKING_URI": mlflow_server.url},
    )
    job = indexed_job("train-pods-test", "train_model", spec, settings)
    template = job["spec"]["template"]
    container = template["spec"]["containers"][0]
    spec_file = tmp_path / SPEC_FILE
    spec_file.write_text(template["metadata"]["annotations"][SPEC_ANNOTATION])
    command = [sys.executable if part == "python" else part for part in container["command"]]
    command = [str(spec_file) if part == f"{SPEC_DIR}/{SPEC_FILE}" else part for part in command]
    addresses = ",".join(local_cluster(2))
    procs = []
    for index in range(2):
        env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}}
        env.update({"JOB_COMPLETION_INDEX": str(index), ENV_WORKER_ADDRESSES: addresses})
        env.pop("TF_CONFIG", None)
        result = tmp_path / f"result-{index}.json"
        cmd = [str(result) if part == "/tmp/result.json" else part for part in command]
        procs.append(
            (
                result,
                subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
            )
        )
    outputs = []
    for _, proc in procs:
        out, _ = proc.communicate(timeout=600)
        outputs.append(out)
    for (_, proc), out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-4000:]
    chief, worker = (json.loads(result.read_text()) for result, _ in procs)
    assert chief["role"] == "chief" and worker["role"] == "worker"
    assert chief["workers"] == worker["workers"] == 2 and chief["replicas"] == 2
    assert "model_uri" in chief and "model_uri" not in worker
    # The cluster came from the pod environment: the chief names both localhost peers.
    assert "MultiWorkerMirroredStrategy with cluster_spec" in outputs[0]
    assert all(address in outputs[0] for address in addresses.split(","))
    logged = mlflow_client.get_run(run.info.run_id)
    assert logged.data.params["workers"] == "2"
    assert [m.step for m in mlflow_client.get_metric_history(run.info.run_id, "loss")] == [0, 1]
    assert len(mlflow_client.search_runs([experiment])) == 1  # no worker opened a run
    models = mlflow_client.search_logged_models(experiment_ids=[experiment])
    assert [m.model_id for m in models] == [chief["model_uri"].removeprefix("models:/")]
    assert Path(spec_file).read_text() == json.dumps(spec, sort_keys=True)
