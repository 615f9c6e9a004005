"""DAGs for the tuning tests: plain objectives (tuning_fns.py), the study in the storage the test gives."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from airflow_ml_provider.operators.tuning import HyperparameterTuningOperator, parallel_tuning

SPACE = {"x": {"type": "float", "low": -4.0, "high": 6.0}, "kind": ["a", "b"]}
PARAMS = {"storage": "", "marker_dir": "", "n_trials": 12}


def _tune(task_id: str, objective_fn: str, **kwargs):
    return HyperparameterTuningOperator(
        task_id=task_id,
        objective_fn=f"tuning_fns:{objective_fn}",
        metric="loss",
        search_space=SPACE,
        storage="{{ params.storage }}",
        custom_config={"marker_dir": "{{ params.marker_dir }}", "die_at": 3},
        seed=11,
        **{"n_trials": "{{ params.n_trials }}", **kwargs},
    )


def _dag(dag_id: str) -> DAG:
    return DAG(dag_id=dag_id, schedule=None, render_template_as_native_obj=True, params=PARAMS)


with _dag("tuning_parallel") as parallel:
    _tune("tune", "quadratic", workers=2, pruner={"type": "median", "n_startup_trials": 4})

with _dag("tuning_flaky") as flaky:
    _tune("tune", "fails_below_zero", max_failed_trials=None, sampler="random")

with _dag("tuning_broken") as broken:
    _tune("tune", "always_fails", workers=2, max_failed_trials=2, retries=0)

with _dag("tuning_bad_space") as bad_space:
    HyperparameterTuningOperator(
        task_id="tune",
        objective_fn="tuning_fns:quadratic",
        metric="loss",
        search_space={"x": {"type": "float", "low": 0.0, "high": 1.0, "log": True}},
        storage="{{ params.storage }}",
        retries=0,
    )

with _dag("tuning_retry") as retry:
    # worker_restarts=0: the task's retry (not a restart of the gang within the try) resumes the study
    _tune("tune", "dies_once", workers=2, retries=1, retry_delay=timedelta(seconds=0), worker_restarts=0)

with _dag("tuning_mapped") as mapped:
    parallel_tuning(
        worker_tasks=2,
        objective_fn="tuning_fns:quadratic",
        metric="loss",
        search_space=SPACE,
        storage="{{ params.storage }}",
        custom_config={"marker_dir": "{{ params.marker_dir }}"},
        n_trials="{{ params.n_trials }}",
        seed=5,
    )

with _dag("tuning_on_kubernetes") as on_kubernetes:
    _tune(
        "tune",
        "quadratic",
        workers=2,
        placement="pod",
        image="registry.example.com/ml/tuner:1.0",
        namespace="ml",
        storage_secret="tuning-db",
        mlflow_secret="mlflow-credentials",
        poll_interval=0.2,
        retries=0,
    )
