"""
Example: the same training on Kubernetes, as an Indexed Job of four pods (parsed and checked in the
tests; it needs a cluster to run).

Each pod runs ``python -m airflow_ml_provider.ml train_model`` from ``image`` (which must hold
TensorFlow, this provider and the ``run_fn`` module) and derives its TF_CONFIG from its completion
index; a headless Service gives the pods stable names. The task waits in the triggerer
(``deferrable=True``); a retry reattaches to the Job it started; a gang whose pods are not all
running within ``start_timeout`` is deleted and the task fails with the pending reason. The Job
waits in the Kueue LocalQueue ``team-a`` until the queue admits all four pods at once; an evicted
or preempted pod is replaced, and the gang resumes from its last checkpoint (every epoch, in the
task's MLflow run). The pods
log to MLflow with the credentials of the Secret ``mlflow-credentials``
(``MLFLOW_TRACKING_TOKEN``, or ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``).
See docs/training.md for the RBAC the Airflow workers and triggerer need.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param

from airflow_ml_provider.operators.training import DistributedTrainingOperator

with DAG(
    dag_id="example_distributed_training_kubernetes",
    schedule=None,
    catchup=False,
    render_template_as_native_obj=True,
    params={"train_uri": Param("s3://datasets/churn/version=0007", type="string")},
    tags=["example", "ml", "training", "kubernetes"],
) as dag:
    # [START howto_operator_distributed_training_kubernetes]
    train = DistributedTrainingOperator(
        task_id="train",
        run_fn="airflow_ml_provider.ml.training.demo:run_fn",
        train_uri="{{ params.train_uri }}",
        hyperparameters={"epochs": 20, "batch_size": 4096},
        # [START howto_operator_distributed_training_warm_start]
        warm_start_from="models:/churn@champion",  # start from the model in production
        # [END howto_operator_distributed_training_warm_start]
        workers=4,
        placement="pod",
        kubernetes_conn_id="kubernetes_default",
        image="registry.example.com/ml/airflow-ml-steps:0.1.0",
        namespace="ml-training",
        container_resources={"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"memory": "8Gi"}},
        node_selector={"pool": "training"},
        tolerations=[{"key": "training", "operator": "Exists", "effect": "NoSchedule"}],
        service_account="ml-training",
        mlflow_secret="mlflow-credentials",
        start_timeout=900,
        # [START howto_operator_distributed_training_kubernetes_resilience]
        checkpoint_every="epoch",  # a restarted gang or a retry resumes from the last epoch
        worker_restarts=3,  # per worker (completion index); evictions are not counted
        queue_name="team-a",  # Kueue: created suspended, admitted all-or-nothing
        admission_timeout=4 * 3600,
        priority_class_name="ml-training",
        # [END howto_operator_distributed_training_kubernetes_resilience]
        deferrable=True,
        retries=2,
    )
    # [END howto_operator_distributed_training_kubernetes]
