"""A training task with checkpoints whose worker 1 dies once: the local gang restarts and resumes."""

from __future__ import annotations

from airflow.sdk import DAG

from airflow_ml_provider.operators.training import DistributedTrainingOperator

with DAG(
    dag_id="training_resumes_from_checkpoint",
    schedule=None,
    render_template_as_native_obj=True,
    params={"record_dir": "", "marker": ""},
) as resumes:
    DistributedTrainingOperator(
        task_id="train",
        run_fn="steps_for_tests:checkpointed_run_fn",  # tests/ is on the workers' PYTHONPATH
        train_uri="{{ params.record_dir }}",  # the run_fn makes its own data
        completion_marker=None,
        custom_config={
            "rows": 2048,
            "epochs": 6,
            "record_dir": "{{ params.record_dir }}",
            "kill": {"worker": 1, "epoch": 3, "batch": 5, "marker": "{{ params.marker }}"},
        },
        workers=2,
        seed=3,
        checkpoint_every="epoch",  # into the task's MLflow run
        worker_restarts=1,
        retries=0,
    )
