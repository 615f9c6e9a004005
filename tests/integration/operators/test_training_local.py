"""
DistributedTrainingOperator with the local launcher: real TensorFlow worker processes, real MLflow.

The example DAG trains the demo classifier on two workers (MultiWorkerMirroredStrategy over
localhost); a one-worker run of the same job must agree with it; the pods' entrypoint, run as
local processes, fine-tunes that model by warm start; a gang whose worker dies restarts and resumes
from its checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.harness import load_dag, run_dag, task_states, task_xcom
from support.pod_player import pod_command, pod_env
from support.step_env import run_in_step_env

from airflow_ml_provider.ml.training.checkpoint import TAG_RESUMED_FROM_EPOCH, TAG_RESUMES
from airflow_ml_provider.ml.training.cluster import local_cluster
from airflow_ml_provider.runners.kubernetes_objects import (
    SPEC_ANNOTATION,
    SPEC_FILE,
    GangPodSettings,
    indexed_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = Path(__file__).parents[3] / "dags_examples"
ROWS = 20000
EPOCHS = 5
# Majority class is about 70 %; the demo label is learnable to about 76 %.
MIN_ACCURACY = 0.74
# Synchronous data parallelism with the same global batch is the same algorithm; the two runs
# differ only by sharding order and float summation order.
AGREEMENT = 0.02


@pytest.fixture(scope="module")
def two_worker_run(airflow_db, mlflow_server, tmp_path_factory) -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", mlflow_server.connection_json())
        data_root = tmp_path_factory.mktemp("training-demo")
        dag_run = run_dag(
            load_dag("example_distributed_training", EXAMPLES),
            conf={"data_root": str(data_root), "rows": ROWS, "epochs": EPOCHS, "workers": 2},
        )
        return {
            "dag_run": dag_run,
            "states": task_states(dag_run),
            "train": task_xcom(dag_run, "train"),
            "data": task_xcom(dag_run, "generate_data"),
        }


def test_two_local_workers_train_to_the_expected_accuracy(two_worker_run, mlflow_client):
    assert two_worker_run["states"] == {
        "generate_data": "success",
        "train": "success",
    }
    train = two_worker_run["train"]
    assert train["workers"] == 2 and train["strategy"] == "multi_worker_mirrored"
    assert train["epochs"] == EPOCHS
    assert train["final_metrics"]["val_accuracy"] >= MIN_ACCURACY
    run = mlflow_client.get_run(train["mlflow_run_id"])
    assert run.data.params["workers"] == "2"
    assert run.data.params["hp.epochs"] == str(EPOCHS)
    history = mlflow_client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == list(range(EPOCHS))  # once per epoch: chief only


def test_workers_open_no_runs_of_their_own(two_worker_run, mlflow_client):
    dag_run = two_worker_run["dag_run"]
    experiment = mlflow_client.get_experiment_by_name("example_distributed_training")
    runs = mlflow_client.search_runs(
        [experiment.experiment_id], f"tags.`airflow.run_id` = '{dag_run.run_id}'"
    )
    assert sorted(r.info.run_name for r in runs) == sorted([dag_run.run_id, "generate_data", "train"])
    all_runs = mlflow_client.search_runs([experiment.experiment_id])
    assert all(r.data.tags.get("airflow.run_id") == dag_run.run_id for r in all_runs)


def test_model_loads_with_pyfunc_and_predicts(two_worker_run, mlflow_server):
    """Loaded where models are served: an environment with TensorFlow (here the step environment)."""
    csv = Path(two_worker_run["data"]["versions"][0]["uri"]) / "part-00000.csv"
    script = f"""
import json, mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model({two_worker_run["train"]["model_uri"]!r})
frame = pd.read_csv({str(csv)!r}).head(2000)
p = model.predict(frame.drop(columns=["label"]))
hits = (p > 0.5) == frame["label"].to_numpy().astype(bool)
print(json.dumps({{"shape": list(p.shape), "low": float(p.min()), "high": float(p.max()), "accuracy": float(hits.mean())}}))
"""
    out = json.loads(run_in_step_env(script, {"MLFLOW_TRACKING_URI": mlflow_server.url}).splitlines()[-1])
    assert out["shape"] == [2000]
    assert 0 <= out["low"] and out["high"] <= 1
    assert out["accuracy"] >= MIN_ACCURACY


def test_one_worker_agrees_with_two_workers(two_worker_run, mlflow_conn, tmp_path):
    dag_run = run_dag(
        load_dag("training_one_worker"),
        conf={"train_uri": two_worker_run["data"]["versions"][0]["uri"], "epochs": EPOCHS},
    )
    one = task_xcom(dag_run, "train")["final_metrics"]
    two = two_worker_run["train"]["final_metrics"]
    assert one["val_accuracy"] >= MIN_ACCURACY
    assert abs(one["val_accuracy"] - two["val_accuracy"]) <= AGREEMENT, (one, two)
    assert abs(one["val_auc"] - two["val_auc"]) <= AGREEMENT, (one, two)


def test_no_worker_process_is_left(two_worker_run):
    import psutil

    mine = psutil.Process(os.getpid()).children(recursive=True)
    assert not [p for p in mine if "airflow_ml_provider.ml" in " ".join(p.cmdline())]


def test_a_killed_worker_fails_the_task_with_a_clear_message_and_no_orphan(
    airflow_db, mlflow_conn, mlflow_client, tmp_path, capfd
):
    import signal
    import threading
    import time

    import psutil

    from airflow_ml_provider.ml.datagen import generate_dataset

    data = generate_dataset({"root": str(tmp_path / "data"), "versions": 1, "rows": 2000})
    markers = tmp_path / "markers"
    markers.mkdir()
    killed: dict[str, int] = {}

    def kill_worker_one() -> None:
        deadline = time.monotonic() + 240
        pid_file = markers / "worker-1.pid"
        while time.monotonic() < deadline and not pid_file.exists():
            time.sleep(0.2)
        if pid_file.exists():
            killed["pid"] = int(pid_file.read_text())
            killed["at"] = time.monotonic()
            os.kill(killed["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_worker_one, daemon=True)
    killer.start()
    dag_run = run_dag(
        load_dag("training_worker_dies"),
        conf={"train_uri": data["versions"][0]["uri"], "marker_dir": str(markers)},
        expect="failed",
    )
    ended = time.monotonic()
    killer.join(timeout=5)
    assert "pid" in killed, "worker 1 never started training"
    assert ended - killed["at"] < 30  # the gang stops within seconds, not at a timeout
    output = capfd.readouterr()
    text = output.out + output.err
    assert "Worker 1 of 2 failed, so the gang was stopped" in text
    assert "SIGKILL" in text
    mine = psutil.Process(os.getpid()).children(recursive=True)
    assert not [p for p in mine if "airflow_ml_provider.ml" in " ".join(p.cmdline())]
    assert (
        not psutil.pid_exists(killed["pid"]) or psutil.Process(killed["pid"]).status() == psutil.STATUS_ZOMBIE
    )
    task_run = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name("training_worker_dies").experiment_id],
        f"tags.`airflow.run_id` = '{dag_run.run_id}' and tags.`airflow.task_id` = 'train'",
    )
    assert [r.info.status for r in task_run] == ["FAILED"]


def test_pod_entrypoint_trains_as_a_gang_warm_started_and_only_the_chief_logs(
    two_worker_run, mlflow_server, mlflow_client, tmp_path
):
    """
    The pods' entrypoint, run for real as local processes with the environment the pods get.

    Each process gets the container's command and environment exactly as the Indexed Job manifest
    has them, plus what Kubernetes adds (``JOB_COMPLETION_INDEX``). Two substitutions only: the spec
    file the downward API would mount is a temporary file, and ``AIRFLOW_ML_WORKER_ADDRESSES`` maps
    the pods' DNS names (which do not resolve here) to localhost ports. The gang fine-tunes the
    example's model (warm start from its models:/ URI) for one epoch.
    """
    warm = two_worker_run["train"]["model_uri"]
    experiment = mlflow_client.create_experiment("pod-entrypoint")
    run = mlflow_client.create_run(experiment)
    spec = {
        "run_fn": "airflow_ml_provider.ml.training.demo:run_fn",
        "train_uri": two_worker_run["data"]["versions"][0]["uri"],
        "strategy": "multi_worker_mirrored",
        "hyperparameters": {"epochs": 1, "learning_rate": 0.001},
        "warm_start_from": warm,
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
    addresses = ",".join(local_cluster(2))
    procs = []
    for index in range(2):
        result = tmp_path / f"result-{index}.json"
        cmd, env = pod_command(container, spec_file, result), pod_env(container, index, addresses)
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
    assert [m.step for m in mlflow_client.get_metric_history(run.info.run_id, "loss")] == [0]
    # Both workers started from the trained model: one epoch at a small rate is already as good.
    assert all("Warm start: weights loaded from" in out for out in outputs)
    assert chief["warm_started_from"] == warm
    assert chief["final_metrics"]["accuracy"] >= MIN_ACCURACY
    assert logged.data.params["warm_start_from"] == warm
    assert len(mlflow_client.search_runs([experiment])) == 1  # no worker opened a run
    models = mlflow_client.search_logged_models(experiment_ids=[experiment])
    assert [m.model_id for m in models] == [chief["model_uri"].removeprefix("models:/")]
    assert Path(spec_file).read_text() == json.dumps(spec, sort_keys=True)


def test_a_worker_that_dies_restarts_the_gang_which_resumes_from_its_checkpoint(
    airflow_db, mlflow_conn, mlflow_client, tmp_path, capfd
):
    """
    The operator with ``checkpoint_every="epoch"``: worker 1 kills itself in epoch 3 (once), the
    local gang restarts (``worker_restarts=1``) and resumes from the task's MLflow run.
    tests/integration/ml/test_checkpoint_resume.py checks the training itself.
    """
    records = tmp_path / "records"
    records.mkdir()
    dag_run = run_dag(
        load_dag("training_resumes_from_checkpoint"),
        conf={"record_dir": str(records), "marker": str(tmp_path / "killed")},
    )
    train = task_xcom(dag_run, "train")
    assert train["resumed_from"] == {"epoch": 3, "step": 78}
    assert train["epochs"] == 6 and train["workers"] == 2
    tags = mlflow_client.get_run(train["mlflow_run_id"]).data.tags
    assert (tags[TAG_RESUMED_FROM_EPOCH], tags[TAG_RESUMES]) == ("3", "1")
    output = capfd.readouterr()
    text = output.out + output.err
    assert (
        "Worker 1 of 2 failed (exit code -9, killed by SIGKILL): the gang restarts from its last checkpoint (restart 1 of 1)"
        in text
    )
    assert "Training resumed from its checkpoint at {'epoch': 3, 'step': 78}" in text
