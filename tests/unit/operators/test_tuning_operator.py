"""HyperparameterTuningOperator: argument checks before any worker, storage and pod settings, parallel_tuning."""

from __future__ import annotations

import json
from typing import Any

import pytest

from airflow_ml_provider.hooks.mlflow import MlflowSettings
from airflow_ml_provider.hooks.tuning_storage import StudyStorageHook, default_storage_url
from airflow_ml_provider.operators.tuning import HyperparameterTuningOperator, parallel_tuning

pytestmark = pytest.mark.unit

SPACE = {"learning_rate": {"type": "float", "low": 1e-4, "high": 0.1, "log": True}}


def _operator(**kwargs: Any) -> HyperparameterTuningOperator:
    base: dict[str, Any] = {
        "task_id": "tune",
        "run_fn": "pkg.mod:run_fn",
        "train_uri": "/data/v1",
        "metric": "val_auc",
        "search_space": SPACE,
    }
    return HyperparameterTuningOperator(**{**base, **kwargs})


def _mlflow() -> MlflowSettings:
    return MlflowSettings(
        tracking_uri="http://mlflow.ml:5000", registry_uri="http://mlflow.ml:5000", ui_url=None, username=None,
        password=None, token="secret-token", insecure_tls=False, request_timeout=30.0, artifact_location=None,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"objective_fn": "pkg.mod:f"}, ValueError, "give run_fn .* or objective_fn, exactly one"),
        ({"run_fn": None}, ValueError, "give run_fn .* or objective_fn, exactly one"),
        ({"metric": None}, ValueError, "with run_fn, metric must name the epoch metric"),
        ({"search_space": "{'lr': [1, 2]}"}, TypeError, "search_space must be a dict"),
        ({"hyperparameters": "{}"}, TypeError, "hyperparameters must be a dict"),
        (
            {"search_space": {"lr": {"type": "float", "low": 0, "high": 1, "log": True}}},
            ValueError,
            r"Task 'tune': search_space\['lr'\]: a log-scale range needs low > 0",
        ),
        (
            {"search_space": {"epochs": [1, 2]}, "hyperparameters": {"epochs": 3}},
            ValueError,
            "both in search_space",
        ),
        ({"metric": "latency"}, ValueError, "set direction='maximize' or 'minimize'"),
        ({"n_trials": None}, ValueError, "give a budget"),
        ({"sampler": "bayes"}, ValueError, "sampler 'bayes' is not one of tpe, random, grid"),
        ({"run_fn": "train.py"}, ValueError, "objective ref must be 'package.module:function'"),
        ({"train_uri": None}, ValueError, "a run_fn objective needs train_uri"),
        ({"launcher": "ray"}, ValueError, "launcher='ray' is not one of local, kubernetes"),
        ({"workers": 0}, ValueError, "workers must be an int in 1..256"),
        ({"launcher": "kubernetes"}, ValueError, "launcher='kubernetes' needs image="),
        ({"worker_slot": -1}, ValueError, "worker_slot must be an int >= 0"),
    ],
)
def test_bad_arguments_are_named_before_any_worker_starts(kwargs, error, message):
    with pytest.raises(error, match=message):
        _operator(**kwargs)._check_arguments()


def test_a_plain_objective_needs_no_data_and_defaults_its_metric():
    operator = _operator(
        run_fn=None, objective_fn="pkg.mod:f", metric=None, train_uri=None, direction="minimize"
    )
    operator._check_arguments()
    assert operator.objective == {"kind": "function", "ref": "pkg.mod:f"}
    assert operator.metric_name == "objective"


def test_pods_refuse_an_sqlite_study(monkeypatch):
    operator = _operator(launcher="kubernetes", image="img:1")
    with pytest.raises(ValueError, match="pods cannot share the SQLite study"):
        operator._check_storage()


def test_pods_get_the_storage_url_from_a_secret_never_in_the_spec(monkeypatch):
    secret_url = "postgresql+psycopg2://optuna:s3cret@db.ml:5432/studies"
    operator = _operator(launcher="kubernetes", image="img:1", storage=secret_url)
    with pytest.raises(
        ValueError, match="holds a password, which must not go into the pod spec.*storage_secret="
    ):
        operator.pod_settings(_mlflow())
    operator = _operator(
        launcher="kubernetes",
        image="img:1",
        storage=secret_url,
        storage_secret="tuning-db",
        mlflow_secret="mlflow-creds",
    )
    settings = operator.pod_settings(_mlflow())
    assert settings.env_from_secrets == ["mlflow-creds", "tuning-db"]
    assert "s3cret" not in json.dumps(settings.env)
    trust = _operator(launcher="kubernetes", image="img:1", storage="postgresql://optuna@db.ml/studies")
    assert (
        trust.pod_settings(_mlflow()).env["AIRFLOW_ML_TUNING_STORAGE"] == "postgresql://optuna@db.ml/studies"
    )


def test_mapped_tasks_on_remote_executors_refuse_the_embedded_study(monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    with pytest.raises(
        ValueError, match="mapped tuning tasks under CeleryExecutor may run on other machines"
    ):
        _operator(worker_slot=0)._check_storage()
    _operator(worker_slot=0, storage="postgresql://optuna@db/studies")._check_storage()
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
    _operator(worker_slot=0)._check_storage()


def test_storage_from_connections(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_TUNING_DB",
        json.dumps({"conn_type": "postgres", "host": "db.ml", "port": 5432, "login": "optuna",
                    "password": "p@ss/word", "schema": "studies", "extra": {"sslmode": "require", "other": "x"}}),
    )  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_LOCAL_DB", json.dumps({"conn_type": "sqlite", "host": "/tmp/s.db"}))
    monkeypatch.setenv("AIRFLOW_CONN_HTTP", json.dumps({"conn_type": "http", "host": "x"}))
    hook = StudyStorageHook("tuning_db")
    assert hook.url == "postgresql+psycopg2://optuna:p%40ss%2Fword@db.ml:5432/studies?sslmode=require"
    assert hook.display == "postgresql+psycopg2://optuna:***@db.ml:5432/studies?sslmode=require"
    assert StudyStorageHook("local_db").url == "sqlite:////tmp/s.db"
    with pytest.raises(
        ValueError, match="Connection 'http' is of type 'http'; tuning studies need a relational database"
    ):
        _ = StudyStorageHook("http").url
    assert StudyStorageHook().url == default_storage_url()
    with pytest.raises(ValueError, match="is in memory"):
        _ = StudyStorageHook(storage="sqlite:///:memory:").url


def test_parallel_tuning_maps_workers_over_one_study_then_summarizes():
    from airflow.sdk import DAG

    with DAG("tuning_groups", schedule=None) as dag:
        best = parallel_tuning(
            worker_tasks=3, objective_fn="pkg.mod:f", metric="loss", search_space=SPACE, storage_conn_id="db"
        )
    assert best.task_id == "tune.best" and best.summary_only
    workers = dag.get_task("tune.workers")
    assert workers.expand_input.value == {"worker_slot": [0, 1, 2]}
    assert workers.partial_kwargs["study_name"] == best.study_name == "{{ dag.dag_id }}.tune.{{ run_id }}"
    assert set(best.upstream_task_ids) == {"tune.workers"}
    with pytest.raises(ValueError, match="worker_tasks must be an int >= 1"):
        parallel_tuning(worker_tasks=0, objective_fn="pkg.mod:f", search_space=SPACE)
