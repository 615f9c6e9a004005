"""A DAG that trains on columns TensorFlow cannot name in a signature (scikit-learn's ``mean radius``)."""

from __future__ import annotations

from airflow.sdk import DAG

from airflow_ml_provider.operators.training import DistributedTrainingOperator

with DAG(
    dag_id="training_spaced_columns",
    schedule=None,
    render_template_as_native_obj=True,
    params={"train_uri": ""},
) as spaced_columns:
    DistributedTrainingOperator(
        task_id="train",
        run_fn="signature_fns:spaced_columns_run_fn",
        train_uri="{{ params.train_uri }}",
        hyperparameters={"epochs": 1},
        workers=1,
        seed=7,
        retries=0,
    )
