"""Every example DAG loads with no import error and runs with dag.test() against a real mlflow server."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cluster import AirflowCluster
from support.harness import DATABASE_URL_ENV, load_dag, postgres_base_url, run_dag, task_states, task_xcom
from support.hitl import Respondent
from support.model_fixtures import churn_version, log_churn_model

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
        "example_promotion_approval",
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
        "validate_v2_against_champion": "success",  # no champion here: validated without a baseline
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
        "generate_holdout": "success",
        "train": "success",
        "evaluate": "success",
        "infra_validate": "success",
        "promote": "success",
    }
    xcom = {task: task_xcom(dag_run, task) for task in ("train", "evaluate", "infra_validate", "promote")}
    evaluation, infra, promotion = xcom["evaluate"], xcom["infra_validate"], xcom["promote"]
    assert evaluation["blessed"] and evaluation["baseline"] is None and evaluation["failures"] == []
    # Evaluated on the new version and on the trusted holdout; the record names both.
    assert evaluation["evaluated_on"] == ["data", "holdout"]
    holdout = evaluation["evaluations"]["holdout"]
    assert holdout["blessed"] and holdout["dataset_version"] == "0001"
    assert holdout["data_uri"].endswith("/holdout/version=0001") and holdout["metrics"]["auc"] >= 0.6
    assert evaluation["candidate_model_uri"] == xcom["train"]["model_uri"]
    assert evaluation["metrics"]["auc"] >= 0.6
    assert infra["blessed"] and infra["model_uri"] == xcom["train"]["model_uri"]
    assert promotion["version"] == "1" and promotion["previous_version"] is None
    assert mlflow_client.get_registered_model(name).aliases == {"champion": "1"}
    tags = mlflow_client.get_model_version(name, "1").tags
    assert tags["airflow_ml.run.evaluation"] == evaluation["mlflow_run_id"]
    assert tags["airflow_ml.run.training"] == xcom["train"]["mlflow_run_id"]


# -- example_promotion_approval: a person answers through a real api-server ----------------------

APPROVER = ("approver", "approver-pw-1")


@pytest.fixture(scope="module")
def respondent(tmp_path_factory: pytest.TempPathFactory, airflow_db: Path) -> Iterator[Respondent]:
    """An api-server on the session's metadata DB (the one dag.test() writes), and a user of it
    (simple auth manager role ``user``) who answers the approval requests through its REST API."""
    if not postgres_base_url():
        pytest.skip(f"{DATABASE_URL_ENV} is not set: the api-server needs the PostgreSQL metadata DB")
    work = tmp_path_factory.mktemp("approval")
    passwords = work / "passwords.json"
    passwords.write_text(json.dumps(dict([APPROVER])))
    env = {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{APPROVER[0]}:user",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
    }
    db_url = os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace("+psycopg2", "")
    with AirflowCluster(work / "cluster", EXAMPLES, db_url=db_url, env=env) as cluster:
        cluster.start_component("api-server")  # the session's DB is migrated (airflow_db)
        yield Respondent(cluster.api_url, *APPROVER)


@pytest.mark.slow
def test_example_promotion_approval_waits_for_a_person(
    airflow_db, mlflow_conn, mlflow_client, respondent, tmp_path
):
    """
    The champion moves only on Approve: while the request waits nothing is promoted; Reject skips
    the promotion and leaves the champion, its versions and its alias history as they were.
    """
    from airflow_ml_provider.hooks.mlflow import MlflowHook

    dag_id = "example_promotion_approval"
    name = f"churn_approval_{uuid.uuid4().hex[:6]}"
    train_uri = churn_version(tmp_path / "train", seed=11)
    eval_uri = churn_version(tmp_path / "eval", seed=12)
    models = {
        q: log_churn_model(mlflow_conn.url, "approval_models", train_uri, q) for q in ("medium", "good")
    }
    dag = load_dag(dag_id)
    hook = MlflowHook()

    def registry() -> dict[str, Any]:
        versions = mlflow_client.search_model_versions(f"name = '{name}'")
        if not versions:  # not registered yet
            return {"aliases": {}, "versions": 0, "history": []}
        history = [(e.from_version, e.to_version, e.kind, e.run_id) for e in hook.alias_history(name)]
        aliases = dict(mlflow_client.get_registered_model(name).aliases)
        return {"aliases": aliases, "versions": len(versions), "history": history}

    def run(quality: str, option: str) -> tuple[Any, Any]:
        thread, answer = respondent.answer_when_asked(dag_id, "approve", option, observe=registry)
        conf = {"candidate_model_uri": models[quality], "data_uri": eval_uri, "model_name": name}
        dag_run = run_dag(dag, conf=conf, expect=None)
        thread.join(timeout=60)
        assert answer.error is None, answer.error  # (the respondent then failed the run to end it)
        assert str(dag_run.state) == "success", task_states(dag_run)
        # While the request waited: evaluated, nothing promoted.
        assert answer.task_states == {"evaluate": "success", "approve": "awaiting_input", "promote": None}
        assert answer.response["chosen_options"] == [option]
        assert answer.response["responded_by"]["name"] == APPROVER[0]
        return dag_run, answer

    # The first model: no champion to compare with; approved, it becomes the champion.
    first, answer = run("medium", "Approve")
    assert answer.observed == {"aliases": {}, "versions": 0, "history": []}
    request = answer.request
    assert request["subject"] == f"Promote the new {name} model to champion?"
    assert request["options"] == ["Approve", "Reject"] and request["defaults"] == ["Reject"]
    body = request["body"]
    assert models["medium"] in body and "none yet" in body and "| auc |" in body
    run_url = task_xcom(first, "evaluate")["report"].split(" (", 1)[1].rstrip(")")
    assert f"[MLflow run]({run_url})" in body and f"({run_url}/artifacts/evaluation/report.html)" in body
    assert task_states(first) == {"evaluate": "success", "approve": "success", "promote": "success"}
    assert task_xcom(first, "approve")["chosen_options"] == ["Approve"]
    assert task_xcom(first, "approve")["responded_by_user"]["name"] == APPROVER[0]
    after_first = registry()
    assert after_first["aliases"] == {"champion": "1"}
    assert after_first["history"] == [(None, "1", "promotion", first.run_id)]

    # A better candidate, rejected: the promotion is skipped, the registry does not change.
    rejected, answer = run("good", "Reject")
    assert answer.observed == after_first
    evaluation = task_xcom(rejected, "evaluate")
    assert evaluation["blessed"] and evaluation["baseline"]["version"] == "1"
    assert "version 1 (`models:/" in answer.request["body"]
    auc = f"| auc | {evaluation['metrics']['auc']:.4g} | {evaluation['baseline_metrics']['auc']:.4g} |"
    assert auc in answer.request["body"]
    assert task_states(rejected) == {"evaluate": "success", "approve": "success", "promote": "skipped"}
    assert registry() == after_first

    # The same candidate, approved: the champion moves to it.
    approved, answer = run("good", "Approve")
    assert answer.observed == after_first
    assert task_states(approved) == {"evaluate": "success", "approve": "success", "promote": "success"}
    after = registry()
    assert after["aliases"] == {"champion": "2", "previous_champion": "1"}
    assert after["history"] == [*after_first["history"], ("1", "2", "promotion", approved.run_id)]
    assert task_xcom(approved, "promote")["previous_version"] == "1"
