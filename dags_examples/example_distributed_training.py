"""
Example: train a TensorFlow model on two local worker processes.

``train`` runs the demo ``run_fn`` (``airflow_ml_provider.ml.training.demo``, the template for
your own) under MultiWorkerMirroredStrategy on two worker processes of this Airflow worker; the
log shows each worker's lines as ``[worker i]``. The chief logs params, per-epoch metrics and the
model (an ``mlflow.pyfunc`` model over the SavedModel) to the task's MLflow run, and XCom gets
its ``model_uri``. The Kubernetes example shows a warm start from the registry's champion.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param

from airflow_ml_provider.operators.step import MLStepOperator
from airflow_ml_provider.operators.training import DistributedTrainingOperator

RUN_DIR = "{{ params.data_root }}/{{ run_id | replace(':', '-') | replace('+', '-') }}"

with DAG(
    dag_id="example_distributed_training",
    schedule=None,
    catchup=False,
    render_template_as_native_obj=True,
    params={
        "data_root": Param("/tmp/airflow-ml-provider/training-demo", type="string"),
        "rows": Param(20000, type="integer", minimum=500),
        "epochs": Param(5, type="integer", minimum=1),
        "workers": Param(2, type="integer", minimum=1, maximum=8),
    },
    tags=["example", "ml", "training"],
) as dag:
    generate = MLStepOperator(
        task_id="generate_data",
        step="generate_dataset",
        spec={"root": f"{RUN_DIR}/data", "versions": 1, "rows": "{{ params.rows }}"},
    )

    # [START howto_operator_distributed_training_local]
    train = DistributedTrainingOperator(
        task_id="train",
        run_fn="airflow_ml_provider.ml.training.demo:run_fn",
        train_uri="{{ ti.xcom_pull('generate_data')['versions'][0]['uri'] }}",
        hyperparameters={"epochs": "{{ params.epochs }}", "batch_size": 256, "learning_rate": 0.01},
        workers="{{ params.workers }}",
        placement="interpreter",  # worker processes on this Airflow worker
        seed=7,
    )
    # [END howto_operator_distributed_training_local]

    generate >> train
