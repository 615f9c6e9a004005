"""
Example: train a TensorFlow model on two local worker processes, then fine-tune it by warm start.

``train`` runs the demo ``run_fn`` (``airflow_ml_provider.ml.training.demo``, the template for
your own) under MultiWorkerMirroredStrategy on two worker processes of this Airflow worker; the
log shows each worker's lines as ``[worker i]``. The chief logs params, per-epoch metrics and the
model (an ``mlflow.pyfunc`` model over the SavedModel) to the task's MLflow run, and XCom gets
its ``model_uri``. ``fine_tune`` starts from that model (``warm_start_from``) on the next dataset
version, on one worker.
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
        spec={"root": f"{RUN_DIR}/data", "versions": 2, "rows": "{{ params.rows }}"},
    )

    # [START howto_operator_distributed_training_local]
    train = DistributedTrainingOperator(
        task_id="train",
        run_fn="airflow_ml_provider.ml.training.demo:run_fn",
        train_uri="{{ ti.xcom_pull('generate_data')['versions'][0]['uri'] }}",
        hyperparameters={"epochs": "{{ params.epochs }}", "batch_size": 256, "learning_rate": 0.01},
        workers="{{ params.workers }}",
        launcher="local",
        seed=7,
    )
    # [END howto_operator_distributed_training_local]

    # [START howto_operator_distributed_training_warm_start]
    fine_tune = DistributedTrainingOperator(
        task_id="fine_tune",
        run_fn="airflow_ml_provider.ml.training.demo:run_fn",
        train_uri="{{ ti.xcom_pull('generate_data')['versions'][1]['uri'] }}",
        hyperparameters={"epochs": 1, "learning_rate": 0.001},
        warm_start_from="{{ ti.xcom_pull('train')['model_uri'] }}",
        seed=7,
    )
    # [END howto_operator_distributed_training_warm_start]

    generate >> train >> fine_tune
