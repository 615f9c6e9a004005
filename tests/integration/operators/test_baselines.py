"""Baselines that travel with the model version: attached at promotion, checked against by validation.

Real DAG runs (dag.test()) against the session's mlflow server, real TFDV in the step environment,
real scikit-learn candidates evaluated and promoted.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from support import harness
from support.harness import run_dag, task_mlflow_run, task_states, task_xcom
from support.model_fixtures import churn_version, log_churn_model

from airflow_ml_provider.ml.datagen import generate_dataset
from airflow_ml_provider.vocabulary import (
    ARTIFACT_BASELINE_SCHEMA,
    ARTIFACT_BASELINE_STATISTICS,
    ARTIFACT_TRAINING_SPEC,
    TAG_BASELINE_DATA_URI,
    TAG_BASELINE_SCHEMA_URI,
    TAG_BASELINE_SOURCE_RUN,
    TAG_BASELINE_STATISTICS_URI,
    TAG_BASELINE_VERSION,
)

pytestmark = pytest.mark.slow

DRIFTED = {"age", "income", "balance", "tenure_months"}  # what the generator's drift=1.0 moves
DAGS = Path(__file__).parents[2] / "dags"


def load_dag(dag_id: str) -> Any:
    """From tests/dags/baseline_dags.py alone (parsing the whole folder each time costs seconds)."""
    return harness.load_dag(dag_id, DAGS / "baseline_dags.py")


@pytest.fixture(scope="module")
def churn(tmp_path_factory: pytest.TempPathFactory, mlflow_server: Any) -> dict[str, Any]:
    """Training, evaluation and drifted data; a candidate whose training run names its training data."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("baselines")
    train_uri = churn_version(root / "train", seed=11)
    drifted = generate_dataset(
        {"root": str(root / "drifted"), "versions": 1, "rows": 4000, "seed": 13, "drift": 1.0}
    )
    drifted_uri = str(drifted["versions"][0]["uri"])
    serving = root / "serving"  # the drifted rows as a model sees them in serving: no label
    serving.mkdir()
    lines = (Path(drifted_uri) / "part-00000.csv").read_text().splitlines()
    label = lines[0].split(",").index("label")
    serving.joinpath("part-00000.csv").write_text(
        "\n".join(",".join(v for i, v in enumerate(line.split(",")) if i != label) for line in lines) + "\n"
    )
    (serving / "_SUCCESS").touch()
    candidate = log_churn_model(mlflow_server.url, "baseline_models", train_uri, "good")
    # What DistributedTrainingOperator records in its run: the spec, naming the training data.
    client = MlflowClient(tracking_uri=mlflow_server.url)
    training_run = client.get_logged_model(candidate.split("/")[-1]).source_run_id
    client.log_text(training_run, json.dumps({"train_uri": train_uri}), ARTIFACT_TRAINING_SPEC)
    return {
        "root": root,
        "train_uri": train_uri,
        "eval_uri": churn_version(root / "eval", seed=12),
        "drifted_uri": drifted_uri,
        "serving_uri": str(serving),
        "candidate": candidate,
    }


def _comparator_features(summary: dict[str, Any]) -> set[str]:
    return {a["feature"] for a in summary["anomalies"] if a["kind"].startswith("COMPARATOR")}


def test_the_champion_carries_its_training_data_baseline_and_validation_checks_against_it(
    airflow_db, mlflow_conn, mlflow_client, mlflow_server, churn
):
    name = f"churn_{uuid.uuid4().hex[:6]}"
    conf = {
        "model_name": name,
        "train_uri": churn["train_uri"],
        "eval_uri": churn["eval_uri"],
        "candidate_uri": churn["candidate"],
        "schema_uri": str(churn["root"] / f"schema-{name}" / "schema.pbtxt"),
    }
    promoted = run_dag(load_dag("baseline_promotion"), conf=conf)
    promotion = task_xcom(promoted, "promote")
    assert promotion["version"] == "1"
    # The version names the training data's validation (not the evaluation data's) and copies of its files.
    source = task_xcom(promoted, "validate_train")["mlflow_run_id"]
    assert source != task_xcom(promoted, "validate_eval")["mlflow_run_id"]
    tags = mlflow_client.get_model_version(name, "1").tags
    copies = f"runs:/{promotion['mlflow_run_id']}"
    assert tags[TAG_BASELINE_STATISTICS_URI] == f"{copies}/{ARTIFACT_BASELINE_STATISTICS}"
    assert tags[TAG_BASELINE_SCHEMA_URI] == f"{copies}/{ARTIFACT_BASELINE_SCHEMA}"
    assert (tags[TAG_BASELINE_SOURCE_RUN], tags[TAG_BASELINE_DATA_URI]) == (source, churn["train_uri"])

    # The copies outlive the validation run: delete it and its files.
    mlflow_client.delete_run(source)
    (folder,) = mlflow_server.artifacts.glob(f"*/{source}/artifacts")
    shutil.rmtree(folder)

    # New training data that drifted: flagged against the champion's training data.
    check = load_dag("baseline_check")
    drifted = run_dag(check, conf={"model_name": name, "data_uri": churn["drifted_uri"]})
    summary = task_xcom(drifted, "validate")
    assert summary["baseline"] == {
        "model_name": name,
        "alias": "champion",
        "version": "1",
        "statistics_uri": tags[TAG_BASELINE_STATISTICS_URI],
        "schema_uri": tags[TAG_BASELINE_SCHEMA_URI],
        "data_uri": churn["train_uri"],
        "missing": None,
    }
    assert DRIFTED <= _comparator_features(summary) and DRIFTED <= set(summary["drift"])
    assert summary["schema_uri"] == tags[TAG_BASELINE_SCHEMA_URI] and summary["schema_created"] is False
    run = task_mlflow_run(mlflow_client, "baseline_check", drifted, "validate")
    assert run.data.tags[TAG_BASELINE_VERSION] == "1"
    assert run.data.metrics["drift.income"] == pytest.approx(summary["drift"]["income"])

    # The evaluation data (a resample of the training distribution) raises nothing.
    clean = task_xcom(run_dag(check, conf={"model_name": name, "data_uri": churn["eval_uri"]}), "validate")
    assert (clean["anomalies"], clean["baseline"]["version"]) == ([], "1")

    # Serving data (no label) of the drifted kind: skew against the champion's training data.
    served = run_dag(
        load_dag("baseline_check_serving"), conf={"model_name": name, "data_uri": churn["serving_uri"]}
    )
    summary = task_xcom(served, "validate")
    assert summary["data_role"] == "serving" and summary["baseline"]["version"] == "1"
    assert DRIFTED <= _comparator_features(summary) and DRIFTED <= set(summary["skew"])
    assert summary["drift"] == {} and "label" not in {a["feature"] for a in summary["anomalies"]}


def test_without_a_champion_or_its_baseline_data_is_validated_without_one(
    airflow_db, mlflow_conn, mlflow_client, churn
):
    name = f"churn_{uuid.uuid4().hex[:6]}"
    check = load_dag("baseline_check")
    conf = {"model_name": name, "data_uri": churn["drifted_uri"]}

    # The first model: no champion yet.
    first = run_dag(check, conf=conf)
    summary = task_xcom(first, "validate")
    assert summary["baseline"]["version"] is None
    assert summary["baseline"]["missing"] == f"{name} has no alias 'champion' yet"
    assert (summary["anomalies"], summary["drift"]) == ([], {})
    assert (
        task_mlflow_run(mlflow_client, "baseline_check", first, "validate").data.tags[TAG_BASELINE_VERSION]
        == "none"
    )

    # A champion promoted by a DAG run that validated nothing: promoted all the same, without a baseline.
    promoted = run_dag(
        load_dag("baseline_promotion_unvalidated"),
        conf={"candidate_uri": churn["candidate"], "eval_uri": churn["eval_uri"], "model_name": name},
    )
    assert task_states(promoted) == {"evaluate": "success", "promote": "success"}
    assert task_xcom(promoted, "promote")["version"] == "1"
    tags = mlflow_client.get_model_version(name, "1").tags
    assert not [key for key in tags if key.startswith("airflow_ml.baseline.")]
    later = run_dag(check, conf=conf)
    summary = task_xcom(later, "validate")
    assert summary["baseline"]["version"] == "1" and summary["baseline"]["statistics_uri"] is None
    assert summary["baseline"]["missing"] == f"version 1 of {name} carries no baseline"
    assert summary["anomalies"] == []
    # The same inputs as the first check: its result is reused, with the baseline found now.
    tags = task_mlflow_run(mlflow_client, "baseline_check", later, "validate").data.tags
    assert (tags["airflow_ml.cache_hit"], tags[TAG_BASELINE_VERSION]) == ("true", "none")
