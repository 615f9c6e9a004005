"""DAGs for the training tests: a one-worker run, and a gang whose worker 1 gets killed."""

from __future__ import annotations

from airflow.sdk import DAG

from airflow_ml_provider.operators.training import DistributedTrainingOperator

with DAG(
    dag_id="training_one_worker",
    schedule=None,
    render_template_as_native_obj=True,
    params={"train_uri": "", "epochs": 5},
) as one_worker:
    DistributedTrainingOperator(
        task_id="train",
        run_fn="airflow_ml_provider.ml.training.demo:run_fn",
        train_uri="{{ params.train_uri }}",
        hyperparameters={"epochs": "{{ params.epochs }}", "batch_size": 256, "learning_rate": 0.01},
        workers=1,
        seed=7,
    )

with DAG(
    dag_id="training_worker_dies",
    schedule=None,
    render_template_as_native_obj=True,
    params={"train_uri": "", "marker_dir": ""},
) as worker_dies:
    DistributedTrainingOperator(
        task_id="train",
        run_fn="training_fns:slow_run_fn",
        train_uri="{{ params.train_uri }}",
        custom_config={"marker_dir": "{{ params.marker_dir }}"},
        workers=2,
        worker_restarts=0,  # a killed worker fails the task at once (no local restart)
        retries=0,
    )

with DAG(dag_id="training_on_kubernetes", schedule=None) as on_kubernetes:
    DistributedTrainingOperator(
        task_id="train",
        run_fn="churn_training.model:run_fn",
        train_uri="s3://datasets/churn/version=0007",
        completion_marker=None,  # the data is fictitious: the pods are played by the test
        hyperparameters={"epochs": 10, "batch_size": 1024},
        workers=2,
        placement="pod",
        image="registry.example.com/ml/churn-trainer:1.4.0",
        namespace="ml",
        container_resources={"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"memory": "8Gi"}},
        node_selector={"pool": "training"},
        tolerations=[{"key": "training", "operator": "Exists", "effect": "NoSchedule"}],
        service_account="ml-training",
        mlflow_secret="mlflow-credentials",
        start_timeout=30.0,
        poll_interval=0.1,
        retries=0,
    )

with DAG(dag_id="training_on_kubernetes_short_start", schedule=None) as short_start:
    DistributedTrainingOperator(
        task_id="train",
        run_fn="churn_training.model:run_fn",
        train_uri="s3://datasets/churn/version=0007",
        completion_marker=None,  # the data is fictitious: the pods are played by the test
        workers=2,
        placement="pod",
        image="registry.example.com/ml/churn-trainer:1.4.0",
        namespace="ml",
        start_timeout=1.0,
        poll_interval=0.1,
        retries=0,
    )
