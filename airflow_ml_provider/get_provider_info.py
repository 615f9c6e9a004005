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
            {"integration-name": INTEGRATION, "python-modules": ["airflow_ml_provider.hooks.mlflow"]},
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
            {"integration-name": INTEGRATION, "python-modules": ["airflow_ml_provider.triggers.model_alias"]},
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
        "extra-links": [
            "airflow_ml_provider.links.mlflow.MlflowRunLink",
            "airflow_ml_provider.links.mlflow.MlflowExperimentLink",
            "airflow_ml_provider.links.mlflow.ValidationReportLink",
            "airflow_ml_provider.links.mlflow.EvaluationReportLink",
            "airflow_ml_provider.links.mlflow.RegisteredModelVersionLink",
        ],
    }
