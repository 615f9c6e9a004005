"""
HyperparameterTuningOperator with the Kubernetes launcher: the Job goes to a fake API server (the
real cncf hook and kubernetes client), and its pods are played by real processes running the
container's command with the container's environment, the study on the test database.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.fake_kubernetes import FakeKubernetes, fake_kubernetes_connection
from support.harness import (
    create_database,
    drop_database,
    load_dag,
    postgres_base_url,
    sqlalchemy_url,
    task_states,
)
from support.step_env import step_python

from airflow_ml_provider.runners.kubernetes_objects import SPEC_ANNOTATION, SPEC_DIR, SPEC_FILE, gang_name

pytestmark = pytest.mark.integration

NS = "ml"
DAG_ID = "tuning_on_kubernetes"
DAGS = str(Path(__file__).parents[2] / "dags")


@pytest.fixture
def storage() -> Any:
    if not postgres_base_url():
        pytest.skip("pods share a study on PostgreSQL (set ML_PROVIDER_TEST_DATABASE_URL)")
    url = create_database("tuning_test")
    yield sqlalchemy_url(url)
    drop_database(url)


def _play_pods(
    kube: FakeKubernetes, name: str, secrets: dict[str, dict[str, str]], workdir: Path
) -> list[str]:
    """Once the Job exists: run each pod's container as a process, then report the pods' end."""
    outputs: list[str] = []

    def body() -> None:
        deadline = time.monotonic() + 300
        while (NS, name) not in kube.jobs and time.monotonic() < deadline:
            time.sleep(0.05)
        job = kube.jobs[(NS, name)]
        template = job["spec"]["template"]
        container = template["spec"]["containers"][0]
        spec_file = workdir / SPEC_FILE
        spec_file.write_text(template["metadata"]["annotations"][SPEC_ANNOTATION])
        command = [step_python() if part == "python" else part for part in container["command"]]
        command = [str(spec_file) if part == f"{SPEC_DIR}/{SPEC_FILE}" else part for part in command]
        env = {**os.environ, "PYTHONPATH": DAGS}
        for source in container.get("envFrom", []):
            env.update(secrets[source["secretRef"]["name"]])
        env.update({e["name"]: e["value"] for e in container["env"]})  # env wins over envFrom
        kube.start_pods(name, NS)
        procs = []
        for index in range(job["spec"]["completions"]):
            cmd = [str(workdir / f"result-{index}.json") if p == "/tmp/result.json" else p for p in command]
            pod_env = {**env, "JOB_COMPLETION_INDEX": str(index)}
            procs.append(
                subprocess.Popen(
                    cmd, env=pod_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
            )
        outputs.extend(proc.communicate(timeout=300)[0] for proc in procs)
        if all(proc.returncode == 0 for proc in procs):
            kube.complete(name, NS)
        else:
            kube.fail_pod(name, NS, 0, exit_code=1, job_failed=True)

    threading.Thread(target=body, daemon=True).start()
    return outputs


def test_pods_pull_trials_from_the_shared_study(
    airflow_db, mlflow_conn, mlflow_client, storage, tmp_path, monkeypatch
):
    import optuna

    markers = tmp_path / "markers"
    markers.mkdir()
    run_after = datetime.now(UTC).replace(microsecond=0)
    with fake_kubernetes_connection(monkeypatch) as kube:
        from airflow.models.dagrun import DagRun
        from airflow.utils.types import DagRunType

        run_id = DagRun.generate_run_id(
            run_type=DagRunType.MANUAL, logical_date=run_after, run_after=run_after
        )
        name = gang_name(DAG_ID, run_id, "tune", -1)
        secrets = {
            "tuning-db": {"AIRFLOW_ML_TUNING_STORAGE": storage},
            "mlflow-credentials": {},
        }
        outputs = _play_pods(kube, name, secrets, tmp_path)
        dag_run = load_dag(DAG_ID).test(
            run_after=run_after,
            logical_date=run_after,
            run_conf={"storage": storage, "marker_dir": str(markers), "n_trials": 8},
        )
        assert str(dag_run.state) == "success", (task_states(dag_run), [o[-3000:] for o in outputs])
        job = kube.recorded("POST", "jobs")[0].body
    container = job["spec"]["template"]["spec"]["containers"][0]
    # The database URL came from the Secret: nothing of it in the pod spec.
    assert "AIRFLOW_ML_TUNING_STORAGE" not in {e["name"] for e in container["env"]}
    assert container["envFrom"] == [
        {"secretRef": {"name": "mlflow-credentials"}},
        {"secretRef": {"name": "tuning-db"}},
    ]
    assert storage.split("@")[-1] not in json.dumps(job)
    study = optuna.load_study(study_name=f"{DAG_ID}.tune.{dag_run.run_id}", storage=storage)
    assert len(study.trials) == 8
    # Each pod took its worker index from JOB_COMPLETION_INDEX; both ran trials.
    assert set(Counter(t.system_attrs["airflow_ml.worker"] for t in study.trials)) == {0, 1}
    ti = next(iter(dag_run.get_task_instances()))
    assert ti.xcom_pull(task_ids="tune") == study.best_params
