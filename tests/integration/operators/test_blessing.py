"""Evaluate -> promote through real DAG runs: blessing, refusal, retry after a crash, and the race.

Real scikit-learn models served by mlflow.pyfunc, real TFMA semantics, a real mlflow server
(PostgreSQL-backed when configured) and real Airflow task runs with dag.test().
"""

from __future__ import annotations

import json
import uuid

import pytest
from support.harness import load_dag, run_dag, task_states, task_xcom
from support.model_fixtures import churn_version, log_churn_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def churn(tmp_path_factory, mlflow_server):
    """Evaluation data, and the three models trained on another version."""
    root = tmp_path_factory.mktemp("churn")
    train_uri = churn_version(root / "train", seed=11)
    eval_uri = churn_version(root / "eval", seed=12)
    models = {
        quality: log_churn_model(mlflow_server.url, "blessing_models", train_uri, quality)
        for quality in ("weak", "medium", "good")
    }
    return {"eval_uri": eval_uri, "models": models}


def _conf(churn, model_name: str, quality: str, **extra) -> dict:
    return {
        "candidate_uri": churn["models"][quality],
        "data_uri": churn["eval_uri"],
        "model_name": model_name,
        **extra,
    }


def _champion(client, name: str, alias: str = "champion") -> str | None:
    model = client.get_registered_model(name)
    version = (model.aliases or {}).get(alias)
    return None if version is None else str(version)


def test_first_model_then_better_is_promoted_worse_is_not(
    airflow_db, mlflow_conn, mlflow_client, churn, tmp_path
):
    name = f"churn_{uuid.uuid4().hex[:6]}"
    dag = load_dag("blessing_pipeline")

    # First model: no champion, so value thresholds only (the change threshold is dropped).
    first = run_dag(dag, conf=_conf(churn, name, "weak"))
    record = task_xcom(first, "evaluate")
    assert record["blessed"] and record["baseline"] is None and record["failures"] == []
    assert record["metrics"]["auc"] > 0.55 and record["engine"] == "fast"
    assert _champion(mlflow_client, name) == "1"

    # A better candidate is blessed against the champion and replaces it.
    better = run_dag(dag, conf=_conf(churn, name, "good"))
    record = task_xcom(better, "evaluate")
    assert record["blessed"] and record["baseline"]["version"] == "1"
    assert record["metrics"]["auc"] > record["baseline_metrics"]["auc"]
    promoted = task_xcom(better, "promote")
    assert (promoted["version"], promoted["previous_version"]) == ("2", "1")
    assert (_champion(mlflow_client, name), _champion(mlflow_client, name, "previous_champion")) == ("2", "1")
    tags = mlflow_client.get_model_version(name, "2").tags
    assert tags["airflow_ml.evaluated_against"] == "1"
    assert tags["airflow_ml.run.evaluation"] == record["mlflow_run_id"]
    assert (
        tags["airflow_ml.run.training"]
        == mlflow_client.get_logged_model(churn["models"]["good"].split("/")[-1]).source_run_id
    )
    assert float(tags["airflow_ml.metric.auc"]) == pytest.approx(record["metrics"]["auc"], rel=1e-5)
    assert "airflow_ml.promoted_at" in tags

    # A worse candidate fails the change threshold on every slice; the registry does not change.
    worse = run_dag(dag, conf=_conf(churn, name, "medium"), expect="failed")
    assert task_states(worse) == {
        "evaluate": "failed",
        "promote": "upstream_failed",
    }
    run = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name("blessing_pipeline").experiment_id],
        f"tags.`airflow.run_id` = '{worse.run_id}' and tags.`airflow.task_id` = 'evaluate'",
    )[0]
    assert run.data.tags["airflow_ml.blessed"] == "false"
    local = mlflow_client.download_artifacts(run.info.run_id, "evaluation/blessing.json", str(tmp_path))
    blessing = json.loads(open(local).read())
    failed = {(f["slice"], f["metric"], f["kind"]) for f in blessing["failures"]}
    assert ("Overall", "auc", "change") in failed
    assert all(
        f["baseline_value"] is not None and f["value"] < f["baseline_value"] for f in blessing["failures"]
    )
    assert run.data.metrics["diff/auc"] < 0 and "auc/region:north" in run.data.metrics
    assert _champion(mlflow_client, name) == "2"
    assert len(mlflow_client.search_model_versions(f"name = '{name}'")) == 2
    # The failed task's record is in XCom; blessing.json names the champion it was compared with.
    record = task_xcom(worse, "evaluate")
    assert record["blessed"] is False and record["failures"] == blessing["failures"]
    baseline = {"model_name": name, "alias": "champion", "version": "2", "model_uri": f"models:/{name}/2"}
    assert record["baseline"] == blessing["baseline"] == baseline

    # on_not_blessed="skip" (what the examples use): skipped, and the same record still in XCom.
    skipped = run_dag(load_dag("blessing_skip"), conf=_conf(churn, name, "medium"))
    assert task_states(skipped) == {"evaluate": "skipped", "promote": "skipped"}
    record = task_xcom(skipped, "evaluate")
    assert record["blessed"] is False and record["baseline"] == baseline
    assert ("Overall", "auc", "change") in {(f["slice"], f["metric"], f["kind"]) for f in record["failures"]}
    assert mlflow_client.get_run(record["mlflow_run_id"]).data.tags["airflow_ml.blessed"] == "false"
    skip_dir = tmp_path / "skipped"
    skip_dir.mkdir()
    local = mlflow_client.download_artifacts(record["mlflow_run_id"], "evaluation/record.json", str(skip_dir))
    assert json.loads(open(local).read()) == record  # the MLflow run keeps it too


def test_retry_after_crash_between_register_and_alias(
    airflow_db, mlflow_conn, mlflow_client, churn, record_property
):
    name = f"churn_{uuid.uuid4().hex[:6]}"
    dag_run = run_dag(load_dag("blessing_crash_after_register"), conf=_conf(churn, name, "good"))
    ti = next(ti for ti in dag_run.get_task_instances() if ti.task_id == "promote")
    assert ti.try_number == 2
    assert task_xcom(dag_run, "promote")["registered_now"] is False
    assert len(mlflow_client.search_model_versions(f"name = '{name}'")) == 1
    assert _champion(mlflow_client, name) == "1"
    record_property("measured", "promote ran twice (try 2): 1 registered version, champion moved once to it")


@pytest.fixture(scope="module")
def flipped(tmp_path_factory, mlflow_server):
    """
    A new version whose labels were all flipped upstream, a candidate trained on it (the good
    feature set), and a trusted holdout (a fixed version the flip did not reach).
    """
    root = tmp_path_factory.mktemp("flipped")
    new_uri = churn_version(root / "churn", seed=13, flip_labels=True)
    return {
        "new_uri": new_uri,
        "holdout_uri": churn_version(root / "holdout", seed=14),
        "candidate": log_churn_model(mlflow_server.url, "blessing_models", new_uri, "good"),
    }


def test_a_trusted_holdout_catches_labels_flipped_in_the_new_version(
    airflow_db, mlflow_conn, mlflow_client, churn, flipped, tmp_path
):
    name = f"churn_{uuid.uuid4().hex[:6]}"
    dag = load_dag("blessing_holdout")
    holdout = flipped["holdout_uri"]

    # First model, on clean data and the holdout: value thresholds on both; promoted.
    first = run_dag(dag, conf=_conf(churn, name, "good", holdout_uri=holdout))
    record = task_xcom(first, "evaluate")
    assert record["blessed"] and record["evaluated_on"] == ["data", "holdout"]
    assert record["evaluations"]["holdout"]["metrics"]["auc"] > 0.7
    assert _champion(mlflow_client, name) == "1"

    # The candidate learned the flipped labels. On the new version it beats the champion, which
    # scores as badly on those labels: the change threshold passes there. On the holdout it is
    # far worse than the champion: not blessed, and the champion stays.
    conf = _conf(churn, name, "good", holdout_uri=holdout, data_uri=flipped["new_uri"])
    conf |= {
        "candidate_uri": flipped["candidate"],
        "dataset_version": {"version": "0007", "uri": flipped["new_uri"]},
    }
    corrupted = run_dag(dag, conf=conf, expect="failed")
    assert task_states(corrupted) == {"evaluate": "failed", "promote": "upstream_failed"}
    assert _champion(mlflow_client, name) == "1"
    record = task_xcom(corrupted, "evaluate")
    data, on_holdout = record["evaluations"]["data"], record["evaluations"]["holdout"]
    assert data["blessed"] and data["metrics"]["auc"] > data["baseline_metrics"]["auc"] + 0.2
    assert (
        not on_holdout["blessed"]
        and on_holdout["metrics"]["auc"] < on_holdout["baseline_metrics"]["auc"] - 0.2
    )
    assert record["blessed"] is False and record["baseline"]["version"] == "1"
    assert {f["dataset"] for f in record["failures"]} == {"holdout"}
    assert all(line.startswith("holdout: ") for line in record["failed_thresholds"])
    # The record names both data, each with its dataset version; `metrics` are the new version's.
    assert (data["data_uri"], data["dataset_version"]) == (flipped["new_uri"], "0007")
    assert (on_holdout["data_uri"], on_holdout["dataset_version"]) == (holdout, "0001")
    assert (record["dataset_version"], record["data_uri"], record["metrics_dataset"]) == (
        "0007",
        flipped["new_uri"],
        "data",
    )
    assert record["metrics"] == data["metrics"]
    assert (data["artifact_dir"], on_holdout["artifact_dir"]) == ("evaluation", "evaluation/holdout")
    # So do the MLflow run's metric names and tags.
    run = mlflow_client.get_run(record["mlflow_run_id"])
    metrics, tags = run.data.metrics, run.data.tags
    assert metrics["diff/auc"] > 0 > metrics["holdout/diff/auc"]
    assert metrics["holdout/auc"] == pytest.approx(on_holdout["metrics"]["auc"], rel=1e-6)
    assert tags["airflow_ml.blessed"] == "false" and tags["airflow_ml.evaluated_on"] == "data,holdout"
    assert {k: v for k, v in tags.items() if k.startswith("airflow_ml.evaluation.")} == {
        "airflow_ml.evaluation.data.uri": flipped["new_uri"],
        "airflow_ml.evaluation.data.version": "0007",
        "airflow_ml.evaluation.data.blessed": "true",
        "airflow_ml.evaluation.holdout.uri": holdout,
        "airflow_ml.evaluation.holdout.version": "0001",
        "airflow_ml.evaluation.holdout.blessed": "false",
    }
    local = mlflow_client.download_artifacts(run.info.run_id, "evaluation", str(tmp_path))
    blessing = json.loads(open(f"{local}/blessing.json").read())
    assert blessing["failures"] == record["failures"] and blessing["datasets"]["holdout"]["blessed"] is False
    assert json.loads(open(f"{local}/holdout/metrics.json").read())["example_count"] == 4000
    assert json.loads(open(f"{local}/record.json").read()) == record
