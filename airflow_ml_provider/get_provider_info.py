"""Provider metadata read by Airflow's ProvidersManager (entry point ``apache_airflow_provider``).

Keep this module free of imports: Airflow reads it in every component at start-up.
"""

from __future__ import annotations

from typing import Any

INTEGRATION = "MLflow"
DATASETS = "Dataset versions"
TRAINING = "TensorFlow distributed training"
TUNING = "Optuna hyperparameter tuning"
DOCS_URL = "https://github.com/airflow-ml-provider/airflow-ml-provider"


def _option(description: str, example: str) -> dict[str, Any]:
    return {
        "description": description,
        "version_added": "0.2.0",
        "type": "string",
        "example": example,
        "default": "",
    }


def get_provider_info() -> dict[str, Any]:
    """Return what this provider contributes to Airflow, in provider_info.schema.json form."""
    return {
        "package-name": "airflow-ml-provider",
        "name": "Machine Learning (TFDV, TensorFlow, TFMA, MLflow)",
        "description": (
            "Continuous training on Airflow: data validation with TensorFlow Data Validation, "
            "data-aware triggering on dataset versions, distributed TensorFlow training, "
            "tuning, model blessing with TensorFlow Model Analysis, and MLflow tracking and "
            "registry."
        ),
        "versions": ["0.1.0"],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://mlflow.org/docs/latest/",
                "tags": ["software"],
            },
            {
                "integration-name": DATASETS,
                "external-doc-url": "https://airflow.apache.org/docs/apache-airflow/stable/authoring-and-scheduling/event-scheduling.html",
                "tags": ["software"],
            },
            {
                "integration-name": TRAINING,
                "external-doc-url": "https://www.tensorflow.org/guide/distributed_training",
                "tags": ["software"],
            },
            {
                "integration-name": TUNING,
                "external-doc-url": "https://optuna.readthedocs.io/",
                "tags": ["software"],
            },
        ],
        "hooks": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_ml_provider.hooks.mlflow",
                    "airflow_ml_provider.hooks.live_metric",
                ],
            },
            {
                "integration-name": DATASETS,
                "python-modules": [
                    "airflow_ml_provider.hooks.datasets",
                    "airflow_ml_provider.hooks.completeness",
                ],
            },
            {"integration-name": TRAINING, "python-modules": ["airflow_ml_provider.hooks.kubernetes"]},
            {"integration-name": TUNING, "python-modules": ["airflow_ml_provider.hooks.tuning_storage"]},
        ],
        "sensors": [
            {"integration-name": DATASETS, "python-modules": ["airflow_ml_provider.sensors.dataset"]},
            {"integration-name": INTEGRATION, "python-modules": ["airflow_ml_provider.sensors.model_alias"]},
        ],
        "triggers": [
            {"integration-name": DATASETS, "python-modules": ["airflow_ml_provider.triggers.dataset"]},
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_ml_provider.triggers.model_alias",
                    "airflow_ml_provider.triggers.guard",
                ],
            },
            {"integration-name": TRAINING, "python-modules": ["airflow_ml_provider.triggers.training_gang"]},
        ],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_ml_provider.operators.base",
                    "airflow_ml_provider.operators.step",
                    "airflow_ml_provider.operators.validation",
                    "airflow_ml_provider.operators.evaluation",
                    "airflow_ml_provider.operators.infra_validation",
                    "airflow_ml_provider.operators.promotion",
                    "airflow_ml_provider.operators.guard",
                ],
            },
            {"integration-name": TRAINING, "python-modules": ["airflow_ml_provider.operators.training"]},
            {"integration-name": TUNING, "python-modules": ["airflow_ml_provider.operators.tuning"]},
        ],
        "connection-types": [
            {
                "connection-type": "mlflow",
                "hook-class-name": "airflow_ml_provider.hooks.mlflow.MlflowHook",
                "hook-name": "MLflow",
                "conn-fields": {
                    "registry_uri": {
                        "label": "Registry URI",
                        "description": "Model registry address, when it is not the tracking server.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "ui_url": {
                        "label": "UI URL",
                        "description": "Address people open the MLflow UI at (for extra links).",
                        "schema": {"type": ["string", "null"]},
                    },
                    "insecure_tls": {
                        "label": "Skip TLS verification",
                        "schema": {"type": ["boolean", "null"]},
                    },
                    "request_timeout": {
                        "label": "Request timeout (seconds)",
                        "schema": {"type": ["number", "null"]},
                    },
                    "artifact_location": {
                        "label": "Artifact root for new experiments",
                        "schema": {"type": ["string", "null"]},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "extra"],
                    "relabeling": {
                        "host": "Tracking URI",
                        "login": "Username (basic auth)",
                        "password": "Password, or token when Username is empty",
                    },
                    "placeholders": {
                        "host": "http://mlflow.example.com:5000",
                        "login": "leave empty for token auth",
                    },
                },
            },
        ],
        # Also an entry point (pyproject.toml): Airflow loads provider-info plugins only with
        # [core] lazy_discover_providers = False, entry-point plugins always.
        "plugins": [
            {"name": "ml_lineage", "plugin-class": "airflow_ml_provider.plugins.lineage.MLLineagePlugin"},
        ],
        "config": {
            "ml_provider": {
                "description": (
                    "Defaults of the ML provider's operators: where steps run (see the Placements page) "
                    "and what the ML lineage view may read."
                ),
                "options": {
                    "default_placement": _option(
                        "Where steps run when a task names no placement: worker, interpreter or pod. Empty: "
                        "interpreter when step_python is set, else each operator's own default "
                        "(training and tuning: interpreter; others: worker).",
                        "pod",
                    ),
                    "step_python": _option(
                        "The step environment's interpreter (Python 3.11 with the TensorFlow stack: "
                        "make step-env, or pip install 'airflow-ml-provider[tensorflow,tuning]' in a "
                        "Python 3.11 virtualenv). Set, it is where every step runs unless a task or "
                        "default_placement says otherwise. Empty: the worker's own interpreter.",
                        "/opt/ml-steps/bin/python",
                    ),
                    "step_image": _option(
                        "The image of placement='pod': this provider and the steps' dependencies.",
                        "registry.example.com/ml-steps:1.2",
                    ),
                    "step_namespace": _option("The namespace of the steps' pods. Empty: default.", "ml"),
                    "step_service_account": _option("The service account of the steps' pods.", "ml-steps"),
                    "step_resources": _option(
                        "The steps' pods' container resources, as JSON. Empty: requests 1 CPU and 2 GiB, "
                        "limits 2 CPUs and 4 GiB.",
                        '{"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}',
                    ),
                    "step_queue_name": _option(
                        "The Kueue LocalQueue (in the steps' namespace) of the steps' Jobs: they are created "
                        "suspended and start when Kueue admits them. A task's queue_name wins; "
                        "queue_name='' sends its Job past Kueue. Empty: no queue.",
                        "team-ml",
                    ),
                    "step_priority_class_name": _option(
                        "The PriorityClass of the steps' pods. A task's priority_class_name wins. Empty: none.",
                        "ml-training",
                    ),
                    "kubernetes_conn_id": _option(
                        "The kubernetes connection (cncf provider) of the steps' pods. Empty: kubernetes_default.",
                        "kubernetes_ml",
                    ),
                    "checkpoint_uri": _option(
                        "Where DistributedTrainingOperator keeps the checkpoints of tasks with "
                        "checkpoint_every and no checkpoint_uri of their own: a directory every worker can "
                        "read and write (shared path or fsspec URI); each task instance gets "
                        "<uri>/<dag_id>/<run_id>/<task_id>[/<map_index>]. Empty: the task's MLflow run.",
                        "s3://ml-checkpoints/airflow",
                    ),
                    "warm_steps": {
                        "description": (
                            "Start the steps of placement='interpreter' (and local gangs) in children of "
                            "a warm step server per interpreter on each worker: the TensorFlow stack is "
                            "imported once, each step gets a fresh child in milliseconds instead of a new "
                            "interpreter's 10-30 s of imports. False: a new interpreter per step."
                        ),
                        "version_added": "0.2.0",
                        "type": "boolean",
                        "example": "False",
                        "default": "True",
                    },
                    "warm_idle_seconds": {
                        "description": "A warm step server exits after this many seconds without a step.",
                        "version_added": "0.2.0",
                        "type": "integer",
                        "example": "1800",
                        "default": "600",
                    },
                    "lineage_artifact_roots": _option(
                        "Comma-separated artifact roots the ML lineage view may read besides MLflow's "
                        "artifact proxy (mlflow-artifacts:) and the connection's artifact_location.",
                        "s3://ml-artifacts/",
                    ),
                },
            },
        },
        "extra-links": [
            "airflow_ml_provider.links.mlflow.MlflowRunLink",
            "airflow_ml_provider.links.mlflow.MlflowExperimentLink",
            "airflow_ml_provider.links.mlflow.ValidationReportLink",
            "airflow_ml_provider.links.mlflow.EvaluationReportLink",
            "airflow_ml_provider.links.mlflow.RegisteredModelVersionLink",
        ],
    }
