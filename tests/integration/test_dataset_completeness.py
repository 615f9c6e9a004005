"""
A dataset version without its completion marker is refused by the first task that reads it, however
the version reached the run (here ``dag_run.conf``): real ``dag.test()`` runs, a real mlflow server.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from support.dataset_fixtures import land
from support.harness import load_dag, run_dag, task_mlflow_run, task_states

pytestmark = pytest.mark.integration


def _conf(folder: Path, **extra: Any) -> dict[str, Any]:
    return {
        "experiment": f"completeness_{uuid.uuid4().hex[:8]}",
        "dataset_version": {"version": "0001", "uri": str(folder)},  # no completed_at, as users write it
        **extra,
    }


def _task_run(client: Any, conf: dict[str, Any], dag_run: Any, task_id: str) -> Any:
    return task_mlflow_run(client, conf["experiment"], dag_run, task_id)


def test_a_conf_version_without_its_marker_fails_the_first_reader_and_registers_nothing(
    airflow_db, mlflow_conn, mlflow_client, tmp_path, capfd
):
    folder = land(tmp_path / "churn", "0001", marker=False)
    model_name = f"completeness_{uuid.uuid4().hex[:8]}"
    conf = _conf(folder, model_name=model_name, candidate_uri=f"models:/{model_name}/1")
    dag_run = run_dag(load_dag("completeness_pipeline"), conf=conf, expect="failed")

    assert task_states(dag_run) == {
        "validate": "failed",
        "evaluate": "upstream_failed",
        "promote": "upstream_failed",
    }
    output = capfd.readouterr()
    logs = output.out + output.err
    assert "DatasetVersionIncomplete" in logs
    assert f"dataset version folder {folder} is incomplete: its completion marker '_SUCCESS'" in logs
    assert "completion_marker=None" in logs
    run = _task_run(mlflow_client, conf, dag_run, "validate")
    assert run.info.status == "FAILED"
    assert not mlflow_client.list_artifacts(run.info.run_id, "validation")  # nothing was read
    assert mlflow_client.search_registered_models(f"name = '{model_name}'") == []


def test_the_opt_out_validates_data_that_has_no_marker(airflow_db, mlflow_conn, mlflow_client, tmp_path):
    folder = land(tmp_path / "churn", "0001", marker=False)
    conf = _conf(folder)
    dag_run = run_dag(load_dag("completeness_opt_out"), conf=conf)
    run = _task_run(mlflow_client, conf, dag_run, "validate")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["example_count"] == 3
