"""
The continuous-training example on a real Airflow, in the layout a platform team deploys
(docs/install.md): the scheduler, triggerer, DAG processor, api-server and the LocalExecutor's task
processes in Airflow's environment (make test: Python 3.12, pandas and numpy 2, no TensorFlow),
every step in the step environment (Python 3.11 with the TensorFlow stack), through the one setting
``[ml_provider] step_python``.

A version lands; the asset watcher starts a run of ``continuous_training``; validation bootstraps
the schema, two worker processes train, evaluation and infra validation bless, promotion moves the
``champion`` alias. The task logs hold no ERROR record and no traceback, and no Airflow process has
loaded TensorFlow, TFDV or TFMA (its environment does not even hold them).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from support.cluster import AirflowCluster
from support.harness import DATABASE_URL_ENV, VENV_BIN, MlflowServer, log_problems, postgres_base_url
from support.step_env import TENSORFLOW_STACK, step_python

from airflow_ml_provider.ml.datagen import generate_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLE = Path(__file__).parents[2] / "dags_examples" / "continuous_training.py"
DAG_ID = "continuous_training"
WATCHER = "churn_training_data_versions"
PIPELINE = ("validate", "tune_or_train", "train", "evaluate", "infra_validate", "promote")
STEPS = {
    "validate": "validate_data",
    "train": "train_model",
    "evaluate": "evaluate_model",
    "infra_validate": "infra_validate",
}


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A server of its own: the example registers the model ``churn``, which no other test may see."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-ct"))
    try:
        yield server.start()
    finally:
        server.stop()


def _maps_with_tensorflow(pid: int) -> bool:
    try:
        maps = Path(f"/proc/{pid}/maps").read_text(errors="replace")
    except OSError:
        return False
    return "tensorflow" in maps


def test_a_landed_version_is_validated_trained_blessed_and_promoted_by_a_real_scheduler(
    tmp_path_factory: pytest.TempPathFactory, mlflow: MlflowServer
) -> None:
    if not postgres_base_url():
        pytest.skip(f"{DATABASE_URL_ENV} is not set: the cluster needs a PostgreSQL metadata DB")
    work = tmp_path_factory.mktemp("ct-cluster")
    dags, landing = work / "dags", work / "landing"
    dags.mkdir()
    shutil.copy(EXAMPLE, dags / EXAMPLE.name)
    env = {
        "AIRFLOW_CONN_MLFLOW_DEFAULT": mlflow.connection_json(),
        "AIRFLOW_ML_EXAMPLE_LANDING": str(landing),
        "AIRFLOW_ML_EXAMPLE_STATE": str(work / "state"),
        # Only continuous_training is unpaused: the hourly and the Kubernetes variants stay off.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW_ML_SCRATCH_DIR": str(work / "scratch"),
    }
    with AirflowCluster(work / "cluster", dags, env=env) as cluster:
        cluster.start()
        assert cluster.env["AIRFLOW__ML_PROVIDER__STEP_PYTHON"] == step_python()
        cluster.wait_dag_parsed(DAG_ID, timeout=180)  # paused: its watcher starts once it is unpaused
        unpaused = requests.patch(
            f"{cluster.api_url}/api/v2/dags/{DAG_ID}", json={"is_paused": False}, timeout=30
        )
        assert unpaused.status_code == 200, unpaused.text
        cluster.wait_watchers_running([WATCHER], timeout=180)

        generate_dataset({"root": str(landing / "churn_training_data"), "versions": [1], "rows": 3000})

        def finished() -> list[dict[str, str]]:
            runs = cluster.dag_runs(DAG_ID)
            return runs if runs and all(r["state"] in ("success", "failed") for r in runs) else []

        [run] = cluster.wait_for(finished, 900, interval=2, what=f"the {DAG_ID} run of version 1")
        states = {ti["task_id"]: ti["state"] for ti in cluster.task_instances(DAG_ID, run["run_id"])}
        assert states == {**dict.fromkeys(PIPELINE, "success"), "tune": "skipped"}, cluster.tails()
        assert run["state"] == "success"

        # The components ran the whole time in Airflow's environment, without the TensorFlow stack.
        for name, proc in cluster.procs.items():
            assert not _maps_with_tensorflow(proc.pid), f"{name} (pid {proc.pid}) has TensorFlow loaded"
        probe = (
            f"import importlib.util as u; print([m for m in {list(TENSORFLOW_STACK)!r} if u.find_spec(m)])"
        )
        found = subprocess.run(
            [str(VENV_BIN / "python"), "-c", probe], capture_output=True, text=True, check=True
        )
        assert found.stdout.strip() == "[]"

        run_dir = cluster.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run['run_id']}"
        for task_id in PIPELINE:
            log = (run_dir / f"task_id={task_id}" / "attempt=1.log").read_text(errors="replace")
            assert not log_problems(log), (task_id, log_problems(log))
            if task_id in STEPS:  # each step ran in the step environment
                assert f"Running step {STEPS[task_id]} with {step_python()}" in log, (task_id, log[-3000:])

    from mlflow import MlflowClient

    champion = MlflowClient(mlflow.url).get_registered_model("churn").aliases
    assert champion == {"champion": "1"}
