"""Every example DAG loads with no import error and runs with dag.test() against a real mlflow server."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from support.harness import load_dag, run_dag, task_states, task_xcom

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).parent.parent.parent / "dags_examples"


def test_example_dags_import_cleanly():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(EXAMPLES))
    assert not bag.import_errors, bag.import_errors
    assert {
        "example_ml_tracking",
        "example_data_validation",
        "example_distributed_training",
        "example_distributed_training_kubernetes",
        "example_model_blessing",
        "example_hyperparameter_tuning",
        "continuous_training",
        "continuous_training_scheduled",
        "continuous_training_kubernetes",
        "deploy_champion",
    } <= set(bag.dags)


def test_example_ml_tracking_runs(airflow_db, mlflow_conn, mlflow_client, tmp_path):
    dag_run = run_dag(load_dag("example_ml_tracking"), conf={"data_root": str(tmp_path), "rows": 300})
    assert task_states(dag_run) == {
        "generate_data": "success",
        "version_specs": "success",
        "describe_version[0]": "success",
        "describe_version[1]": "success",
    }
    experiment = mlflow_client.get_experiment_by_name("example_ml_tracking")
    runs = mlflow_client.search_runs(
        [experiment.experiment_id], f"tags.`airflow.run_id` = '{dag_run.run_id}'"
    )
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {dag_run.run_id, "generate_data", "describe_version[0]", "describe_version[1]"}
    assert by_name["describe_version[0]"].data.metrics["rows"] == 300.0
    assert 0.1 < by_name["describe_version[1]"].data.metrics["positive_rate"] < 0.6


@pytest.mark.slow
def test_example_data_validation_gates_in_three_modes(airflow_db, mlflow_conn, mlflow_client, tmp_path):
    dag_run = run_dag(
        load_dag("example_data_validation"), conf={"data_root": str(tmp_path), "rows": 3000}, expect="failed"
    )
    assert task_states(dag_run) == {
        "generate_data": "success",
        "validate_v1": "success",
        "validate_v2_fail": "failed",
        "train_fail": "upstream_failed",
        "validate_v2_skip": "skipped",
        "train_skip": "skipped",
        "validate_v2_warn": "success",
        "train_warn": "success",
    }
    experiment = mlflow_client.get_experiment_by_name("example_data_validation")
    runs = {
        r.info.run_name: r
        for r in mlflow_client.search_runs(
            [experiment.experiment_id], f"tags.`airflow.run_id` = '{dag_run.run_id}'"
        )
    }
    assert runs["validate_v2_fail"].info.status == "FAILED"
    assert runs["validate_v2_skip"].info.status == "FINISHED"
    assert runs["validate_v2_skip"].data.tags["airflow.state"] == "skipped"
    # The three gates validate the same version with the same spec: the first to run computes, the
    # other two reuse its result from the step cache (their runs link the source, which holds the files).
    v2 = ("validate_v2_fail", "validate_v2_skip", "validate_v2_warn")
    computed = [name for name in v2 if runs[name].data.tags.get("airflow_ml.cache_hit") == "false"]
    assert len(computed) == 1, {name: runs[name].data.tags.get("airflow_ml.cache_hit") for name in v2}
    source_id = runs[computed[0]].info.run_id
    for name in v2:
        if name != computed[0]:
            assert runs[name].data.tags["airflow_ml.cache_hit"] == "true", name
            assert runs[name].data.tags["airflow_ml.cache_source_run_id"] == source_id, name
    evidence = {
        name: runs[name].data.tags.get("airflow_ml.cache_source_run_id", runs[name].info.run_id)
        for name in runs
    }
    for name in ("validate_v1", "validate_v2_fail", "validate_v2_warn"):
        artifacts = {a.path for a in mlflow_client.list_artifacts(evidence[name], "validation")}
        assert {
            "validation/statistics.pb",
            "validation/anomalies.json",
            "validation/anomalies.pbtxt",
            "validation/report.html",
        } <= artifacts, (name, artifacts)
    for name in ("validate_v2_fail", "validate_v2_warn"):  # histograms against the previous version
        plots = mlflow_client.list_artifacts(evidence[name], "validation/plots")
        assert any(p.path.endswith(".png") for p in plots), (name, plots)
    report = mlflow_client.download_artifacts(
        evidence["validate_v2_warn"], "validation/report.html", str(tmp_path)
    )
    html = Path(report).read_text()
    assert "<script src" not in html and "<link " not in html  # renders offline
    assert "region" in html and "data:image/png;base64," in html
    assert runs["validate_v1"].data.metrics["anomaly_count"] == 0
    assert runs["validate_v2_warn"].data.metrics["anomaly_count"] > 0
    assert (tmp_path / "schema").exists() or any(tmp_path.rglob("schema.pbtxt"))


@pytest.mark.slow
def test_example_model_blessing_evaluates_infra_validates_and_promotes(
    airflow_db, mlflow_conn, mlflow_client, tmp_path
):
    """First model of a new registered model: no champion, so value thresholds alone bless it."""
    name = f"churn_example_{uuid.uuid4().hex[:6]}"
    dag_run = run_dag(
        load_dag("example_model_blessing"),
        conf={"data_root": str(tmp_path), "rows": 3000, "epochs": 2, "model_name": name},
    )
    assert task_states(dag_run) == {
        "generate_data": "success",
        "train": "success",
        "evaluate": "success",
        "infra_validate": "success",
        "promote": "success",
    }
    xcom = {task: task_xcom(dag_run, task) for task in ("train", "evaluate", "infra_validate", "promote")}
    evaluation, infra, promotion = xcom["evaluate"], xcom["infra_validate"], xcom["promote"]
    assert evaluation["blessed"] and evaluation["baseline"] is None and evaluation["failures"] == []
    assert evaluation["candidate_model_uri"] == xcom["train"]["model_uri"]
    assert evaluation["metrics"]["auc"] >= 0.6
    assert infra["blessed"] and infra["model_uri"] == xcom["train"]["model_uri"]
    assert promotion["version"] == "1" and promotion["previous_version"] is None
    assert mlflow_client.get_registered_model(name).aliases == {"champion": "1"}
    tags = mlflow_client.get_model_version(name, "1").tags
    assert tags["airflow_ml.run.evaluation"] == evaluation["mlflow_run_id"]
    assert tags["airflow_ml.run.training"] == xcom["train"]["mlflow_run_id"]
