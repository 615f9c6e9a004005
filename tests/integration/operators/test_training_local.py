"""
DistributedTrainingOperator with the local launcher: real TensorFlow worker processes, real MLflow.

The example DAG trains the demo classifier on two workers (MultiWorkerMirroredStrategy over
localhost) and fine-tunes it by warm start; a one-worker run of the same job must agree with it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from harness import load_dag, run_dag, task_states

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = Path(__file__).parents[3] / "dags_examples"
ROWS = 20000
EPOCHS = 5
# Majority class is about 70 %; the demo label is learnable to about 76 %.
MIN_ACCURACY = 0.74
# Synchronous data parallelism with the same global batch is the same algorithm; the two runs
# differ only by sharding order and float summation order.
AGREEMENT = 0.02


def _xcom(dag_run: Any, task_id: str) -> Any:
    ti = next(t for t in dag_run.get_task_instances() if t.task_id == task_id)
    return ti.xcom_pull(task_ids=task_id)


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
            "train": _xcom(dag_run, "train"),
            "fine_tune": _xcom(dag_run, "fine_tune"),
            "data": _xcom(dag_run, "generate_data"),
        }


def test_two_local_workers_train_to_the_expected_accuracy(two_worker_run, mlflow_client):
    assert two_worker_run["states"] == {
        "generate_data": "success",
        "train": "success",
        "fine_tune": "success",
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
    assert sorted(r.info.run_name for r in runs) == sorted(
        [dag_run.run_id, "generate_data", "train", "fine_tune"]
    )
    all_runs = mlflow_client.search_runs([experiment.experiment_id])
    assert all(r.data.tags.get("airflow.run_id") == dag_run.run_id for r in all_runs)


def test_model_loads_with_pyfunc_and_predicts(two_worker_run, mlflow_server, monkeypatch):
    import mlflow.pyfunc
    import pandas as pd

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    model = mlflow.pyfunc.load_model(two_worker_run["train"]["model_uri"])
    frame = pd.read_csv(Path(two_worker_run["data"]["versions"][0]["uri"]) / "part-00000.csv").head(2000)
    probabilities = model.predict(frame.drop(columns=["label"]))
    assert probabilities.shape == (2000,)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    accuracy = ((probabilities > 0.5) == frame["label"].to_numpy().astype(bool)).mean()
    assert accuracy >= MIN_ACCURACY


def test_warm_start_starts_from_the_trained_model(two_worker_run, mlflow_client):
    fine_tune = two_worker_run["fine_tune"]
    assert fine_tune["warm_started_from"] == two_worker_run["train"]["model_uri"]
    # One epoch at a small learning rate from a trained model: already as good as the full run.
    assert fine_tune["final_metrics"]["accuracy"] >= MIN_ACCURACY
    run = mlflow_client.get_run(fine_tune["mlflow_run_id"])
    assert run.data.params["warm_start_from"] == two_worker_run["train"]["model_uri"]


def test_one_worker_agrees_with_two_workers(two_worker_run, mlflow_conn, tmp_path):
    dag_run = run_dag(
        load_dag("training_one_worker"),
        conf={"train_uri": two_worker_run["data"]["versions"][0]["uri"], "epochs": EPOCHS},
    )
    one = _xcom(dag_run, "train")["final_metrics"]
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
