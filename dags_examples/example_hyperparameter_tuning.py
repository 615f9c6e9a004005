"""
Example: tune the demo classifier's hyperparameters, then train with the best ones.

``tune`` runs trials of the demo ``run_fn`` (the same function the training task runs) on two
worker processes that share one Optuna study; the median pruner stops trials whose ``val_auc``
trails the others after an epoch. Every trial is a child run of the task's MLflow run. The best
values (with the fixed ``epochs``) are the task's XCom, which ``train`` takes as its
``hyperparameters``.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param

from airflow_ml_provider.operators.step import MLStepOperator
from airflow_ml_provider.operators.training import DistributedTrainingOperator
from airflow_ml_provider.operators.tuning import HyperparameterTuningOperator

RUN_DIR = "{{ params.data_root }}/{{ run_id | replace(':', '-') | replace('+', '-') }}"
DATA = "{{ ti.xcom_pull('generate_data')['versions'][0]['uri'] }}"

with DAG(
    dag_id="example_hyperparameter_tuning",
    schedule=None,
    catchup=False,
    render_template_as_native_obj=True,
    params={
        "data_root": Param("/tmp/airflow-ml-provider/tuning-demo", type="string"),
        "rows": Param(20000, type="integer", minimum=500),
        "epochs": Param(5, type="integer", minimum=1),
        "n_trials": Param(20, type="integer", minimum=1),
        "workers": Param(2, type="integer", minimum=1, maximum=16),
    },
    tags=["example", "ml", "tuning"],
) as dag:
    generate = MLStepOperator(
        task_id="generate_data",
        step="generate_dataset",
        spec={"root": f"{RUN_DIR}/data", "versions": 1, "rows": "{{ params.rows }}"},
    )

    # [START howto_operator_hyperparameter_tuning]
    tune = HyperparameterTuningOperator(
        task_id="tune",
        run_fn="airflow_ml_provider.ml.training.demo:run_fn",
        train_uri=DATA,
        metric="val_auc",  # maximized: told from the name
        search_space={
            "learning_rate": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
            "hidden_units": {"type": "int", "low": 8, "high": 64, "step": 8},
            "batch_size": [128, 256, 512],
        },
        hyperparameters={"epochs": "{{ params.epochs }}"},  # fixed in every trial
        n_trials="{{ params.n_trials }}",
        sampler="tpe",
        pruner={"type": "median", "n_startup_trials": 3, "n_warmup_steps": 1},
        workers="{{ params.workers }}",
        seed=7,
    )

    train = DistributedTrainingOperator(
        task_id="train",
        run_fn="airflow_ml_provider.ml.training.demo:run_fn",
        train_uri=DATA,
        hyperparameters=tune.output,  # the fixed values and the best ones
        seed=7,
    )
    # [END howto_operator_hyperparameter_tuning]

    generate >> tune >> train
