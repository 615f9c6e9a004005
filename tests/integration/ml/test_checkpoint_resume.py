"""
Checkpoints and resume, for real: a local gang of two TensorFlow workers (MultiWorkerMirroredStrategy)
trains ``steps_for_tests:checkpointed_run_fn``; worker 1 SIGKILLs itself in the middle of an epoch.

- Restarted gang, checkpoints in the task's MLflow run: the gang restarts, resumes at the epoch of
  the last complete checkpoint (the epochs before it are not trained again), the MLflow run says
  where it resumed, and the model is as good as an uninterrupted run's with the same seed.
- Task retry, checkpoints in a shared directory every N steps: the first try runs as a Job's pods
  do (worker 1 killed, the chief exits 75 by itself), a second call with the same spec resumes
  mid-epoch; a finished training deletes its directory.
- The MLflow store alone (no TensorFlow): an upload cut short leaves the previous checkpoint whole,
  and a finished store is not resumed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.checkpoint_faults import CutShort
from support.checkpoint_faults import save as _save
from support.log_capture import Collect

from airflow_ml_provider.ml.exit_codes import EXIT_RETRY
from airflow_ml_provider.ml.training.checkpoint import (
    ARTIFACT_CHECKPOINTS,
    METRIC_RESUMED_FROM_EPOCH,
    TAG_RESUMED_FROM_EPOCH,
    TAG_RESUMES,
    MlflowRunStore,
    TrainingCheckpoints,
)
from airflow_ml_provider.ml.training.cluster import local_cluster, worker_environments
from airflow_ml_provider.runners.gang import GangRunner

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCHS = 6
STEPS_PER_EPOCH = 26  # 80 % of 2048 rows in global batches of 64
# The data comes in the same order every epoch and the checkpoint holds the weights, the optimizer
# state and the step counter: a resumed run redoes the killed epoch exactly. Measured: the same
# accuracy to the last digit; the margin is for float summation order across processes.
SAME_ACCURACY = 0.005
MID_EPOCH_ACCURACY = 0.02


def _spec(
    tmp: Path,
    uri: str | None,
    *,
    run_id: str | None = None,
    kill: dict[str, Any] | None = None,
    every: str | int = "epoch",
) -> dict[str, Any]:
    records = tmp / "records"
    records.mkdir(exist_ok=True)
    config: dict[str, Any] = {"rows": 2048, "epochs": EPOCHS, "record_dir": str(records)}
    if kill:
        config["kill"] = {**kill, "worker": 1, "marker": str(tmp / "killed")}
    spec: dict[str, Any] = {
        "run_fn": "steps_for_tests:checkpointed_run_fn",
        "train_uri": str(tmp),  # the run_fn makes its own data
        "strategy": "multi_worker_mirrored",
        "seed": 3,
        "custom_config": config,
        "checkpoint": {"every": every, "uri": uri},
    }
    if run_id:
        spec["mlflow"] = {"run_id": run_id}
    return spec


def _gang(restarts: int, env: dict[str, str] | None = None) -> GangRunner:
    # Warm: the workers are children of the step server, which imported TensorFlow once.
    return GangRunner(
        lambda: worker_environments(local_cluster(2)), env=env or {}, warm=True, restarts=restarts
    )


def _logger() -> tuple[logging.Logger, Collect]:
    logger = logging.getLogger(f"test_checkpoint_resume.{time.monotonic_ns()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = Collect()
    logger.addHandler(handler)
    return logger, handler


def _epochs_begun(tmp: Path) -> dict[int, list[int]]:
    return {i: [int(e) for e in (tmp / "records" / f"worker-{i}.epochs").read_text().split()] for i in (0, 1)}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same training, never killed (checkpoints in a directory, which it deletes at the end)."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    store = tmp / "store"
    started = time.monotonic()
    results = _gang(restarts=0).run_all("train_model", _spec(tmp, str(store)))
    return {
        "results": results,
        "store": store,
        "epochs": _epochs_begun(tmp),
        "seconds": time.monotonic() - started,
    }


def test_an_uninterrupted_run_starts_from_scratch_and_deletes_its_finished_checkpoints(uninterrupted):
    chief, worker = uninterrupted["results"]
    assert chief["resumed_from"] is None and worker["resumed_from"] is None
    assert chief["epochs"] == EPOCHS
    assert uninterrupted["epochs"] == {0: list(range(EPOCHS)), 1: list(range(EPOCHS))}
    assert not uninterrupted["store"].exists()  # finished: a rerun trains from scratch


def test_a_killed_worker_restarts_the_gang_which_resumes_from_the_mlflow_run(
    uninterrupted, tmp_path, mlflow_server, mlflow_client
):
    run = mlflow_client.create_run(mlflow_client.create_experiment("checkpoint-restart"))
    run_id = run.info.run_id
    logger, logged = _logger()
    spec = _spec(tmp_path, None, run_id=run_id, kill={"epoch": 3, "batch": 5})

    chief, worker = _gang(restarts=1, env={"MLFLOW_TRACKING_URI": mlflow_server.url}).run_all(
        "train_model", spec, logger=logger
    )

    assert (tmp_path / "killed").exists(), "worker 1 was never killed"
    resumed = {"epoch": 3, "step": 3 * STEPS_PER_EPOCH}
    assert chief["resumed_from"] == resumed and worker["resumed_from"] == resumed
    assert chief["epochs"] == EPOCHS
    # Epochs 0-2 were checkpointed: the restarted gang began at epoch 3, the one worker 1 died in.
    assert _epochs_begun(tmp_path) == {0: [0, 1, 2, 3, 3, 4, 5], 1: [0, 1, 2, 3, 3, 4, 5]}
    lines = logged.messages
    assert [line for line in lines if line.startswith("Worker ")] == [
        "Worker 1 of 2 failed (exit code -9, killed by SIGKILL): the gang restarts from its last "
        "checkpoint (restart 1 of 1)"
    ]
    for i in (0, 1):
        assert any(
            line.startswith(f"[worker {i}]")
            and "Resuming from the checkpoint of MLflow run" in line
            and "at epoch 3" in line
            for line in lines
        ), f"worker {i} does not say where it resumed"

    logged_run = mlflow_client.get_run(run_id)
    assert logged_run.data.tags[TAG_RESUMED_FROM_EPOCH] == "3"
    assert logged_run.data.tags[TAG_RESUMES] == "1"
    history = mlflow_client.get_metric_history(run_id, METRIC_RESUMED_FROM_EPOCH)
    assert [(m.step, m.value) for m in history] == [(1, 3.0)]
    # Every epoch's metrics once, at its own step: those before the kill, then those after the resume.
    assert sorted(m.step for m in mlflow_client.get_metric_history(run_id, "loss")) == list(range(EPOCHS))

    reference = uninterrupted["results"][0]["final_metrics"]
    for name in ("val_accuracy", "accuracy", "val_loss"):
        assert abs(chief["final_metrics"][name] - reference[name]) <= SAME_ACCURACY, (chief, reference)

    # Finished: the marker says so (a rerun trains from scratch) and the slots are gone.
    store = MlflowRunStore(run_id, mlflow_server.url)
    assert store.read_marker()["finished"] is True
    assert [a.path for a in mlflow_client.list_artifacts(run_id, ARTIFACT_CHECKPOINTS)] == [
        f"{ARTIFACT_CHECKPOINTS}/latest.json"
    ]


def test_workers_that_lose_a_peer_exit_75_and_a_retry_resumes_mid_epoch_from_a_directory(
    uninterrupted, tmp_path
):
    """
    The first try runs as a Kubernetes Indexed Job's pods do, each process on its own: worker 1 is
    killed, and the chief finds out by itself (TensorFlow's heartbeat) and exits 75, the code the
    pod failure policy retries. The retry (same spec, same directory) resumes mid-epoch.
    """
    store = tmp_path / "checkpoints" / "dag" / "run" / "train"
    # Every 13 steps (half an epoch); killed at batch 20 of epoch 2: the last checkpoint is after
    # batch 12 of epoch 2.
    spec = _spec(tmp_path, str(store), kill={"epoch": 2, "batch": 20}, every=13)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    workers = []
    for index, env in enumerate(worker_environments(local_cluster(2))):
        cmd = [sys.executable, "-m", "airflow_ml_provider.ml", "train_model", "--spec", str(spec_file)]
        cmd += ["--result", str(tmp_path / f"result-{index}.json")]
        out = (tmp_path / f"worker-{index}.log").open("w")
        workers.append(subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT))
    codes = [proc.wait(timeout=300) for proc in workers]

    assert codes == [EXIT_RETRY, -signal.SIGKILL]
    chief_said = [
        line for line in (tmp_path / "worker-0.log").read_text().splitlines() if line.startswith("error:")
    ]
    assert len(chief_said) == 1 and chief_said[0].startswith(
        "error: step train_model lost a peer of the gang: "
    )
    assert chief_said[0].endswith("; the gang restarts from its last checkpoint")
    marker = json.loads((store / "latest.json").read_text())
    assert (marker["epoch"], marker["batch"], marker["step"]) == (2, 13, 2 * STEPS_PER_EPOCH + 13)

    chief, _ = _gang(restarts=0).run_all("train_model", spec)  # the retry: same spec, same store

    assert chief["resumed_from"] == {"epoch": 2, "step": 2 * STEPS_PER_EPOCH + 13}
    assert chief["epochs"] == EPOCHS
    assert _epochs_begun(tmp_path)[0] == [0, 1, 2, 2, 3, 4, 5]
    # Keras resumes the epoch at step 13 but reads the epoch's dataset from its start: the second
    # half of epoch 2's batches is replaced by the first half again, hence a wider margin (measured
    # here: the same validation accuracy all the same).
    reference = uninterrupted["results"][0]["final_metrics"]
    assert abs(chief["final_metrics"]["val_accuracy"] - reference["val_accuracy"]) <= MID_EPOCH_ACCURACY, (
        chief["final_metrics"],
        reference,
    )
    assert not store.exists()


# -- the MLflow store alone ---------------------------------------------------------------------


class _CutShort(CutShort, MlflowRunStore):
    """Dies after uploading ``files_before_death`` files (a chief killed mid-upload)."""


def test_mlflow_store_an_upload_cut_short_leaves_the_previous_checkpoint_and_finished_is_not_resumed(
    tmp_path, mlflow_server, mlflow_client
):
    run_id = mlflow_client.create_run(mlflow_client.create_experiment("checkpoint-store")).info.run_id
    store = _CutShort(run_id, mlflow_server.url)
    chief = TrainingCheckpoints(store, str(tmp_path / "chief"), every="epoch", is_chief=True)
    _save(chief, "first", 1)
    _save(chief, "second", 2)
    store.files_before_death = 1
    with pytest.raises(KeyboardInterrupt):
        _save(chief, "third", 3)  # two slots: it overwrote the older one, never the latest

    restarted = TrainingCheckpoints(
        MlflowRunStore(run_id, mlflow_server.url), str(tmp_path / "w1"), every="epoch", is_chief=False
    )
    assert restarted.restore() == {"epoch": 2, "step": 20}
    assert sorted(p.name for p in restarted.checkpoint_dir.iterdir()) == [
        "checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index"
    ]  # fmt: skip
    assert (restarted.checkpoint_dir / "ckpt-2.index").read_text() == "second"
    slots = {a.path for a in mlflow_client.list_artifacts(run_id, ARTIFACT_CHECKPOINTS)}
    assert slots == {f"{ARTIFACT_CHECKPOINTS}/{name}" for name in ("latest.json", "slot-0", "slot-1")}

    chief.finish()
    again = TrainingCheckpoints(
        MlflowRunStore(run_id, mlflow_server.url), str(tmp_path / "rerun"), every="epoch", is_chief=True
    )
    assert again.restore() is None
    assert not any(again.checkpoint_dir.iterdir())


def test_one_worker_checkpoints_and_resumes_on_the_default_strategy(tmp_path):
    """``one_device`` with checkpoints: tf_keras' BackupAndRestore refuses OneDeviceStrategy, so the
    step uses TensorFlow's default strategy (found by benchmarks/checkpoint_resume.py)."""
    from airflow_ml_provider.runners import PythonRunner

    store = tmp_path / "store"
    spec = {**_spec(tmp_path, str(store)), "strategy": "one_device"}
    spec["custom_config"] = {**spec["custom_config"], "epochs": 2}
    runner = PythonRunner(warm=True)
    result = runner.run("train_model", spec)
    assert (result["epochs"], result["strategy"], result["resumed_from"]) == (2, "one_device", None)
    assert not store.exists()  # finished: nothing to resume from
    # A crash after the first epoch, then the same spec again: it resumes at epoch 1.
    spec["custom_config"]["kill"] = {"worker": 0, "epoch": 1, "batch": 2, "marker": str(tmp_path / "killed")}
    with pytest.raises(Exception, match="SIGKILL|-9|137"):
        runner.run("train_model", spec)
    assert json.loads((store / "latest.json").read_text())["epoch"] == 1
    result = runner.run("train_model", spec)
    assert (result["epochs"], result["resumed_from"]) == (2, {"epoch": 1, "step": 26})
