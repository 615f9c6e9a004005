"""
Example: validate dataset versions with TFDV and gate training on the result.

Version 1 is clean: its validation bootstraps the schema (none exists yet) and becomes the
reference statistics. Version 2 drifts and brings a new category; it is validated against the
schema and against version 1, three times, once per ``on_anomaly`` mode, each gating a stand-in
training task:

- ``fail``: the validation task fails with the list of anomalies; its ``train`` never runs;
- ``skip``: the validation task is skipped, and so is its ``train``;
- ``warn``: the anomalies are recorded and ``train`` runs.

Version 2 is also checked against the training data of the model in production: the champion of
``params.model_name`` carries the statistics and schema of the data it was trained on (its
promotion attached them), so ``baseline="champion"`` needs no run id. Before a first model is
promoted there is no champion, and the version is validated without a baseline.

Every validation task's MLflow run holds the statistics, anomalies, schema, an HTML report and
plots under ``validation/``.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task

from airflow_ml_provider.operators.step import MLStepOperator
from airflow_ml_provider.operators.validation import DataValidationOperator

RUN_DIR = "{{ params.data_root }}/{{ run_id | replace(':', '-') | replace('+', '-') }}"

with DAG(
    dag_id="example_data_validation",
    schedule=None,
    catchup=False,
    render_template_as_native_obj=True,
    params={
        "data_root": Param("/tmp/airflow-ml-provider/validation-demo", type="string"),
        "rows": Param(5000, type="integer", minimum=100),
        "model_name": Param("churn", type="string"),
    },
    tags=["example", "ml", "validation"],
) as dag:
    generate = MLStepOperator(
        task_id="generate_data",
        step="generate_dataset",
        spec={
            "root": f"{RUN_DIR}/data",
            "versions": 2,
            "rows": "{{ params.rows }}",
            "knobs_per_version": {"2": {"drift": 1.0, "new_category": "region"}},
        },
    )

    # [START howto_operator_data_validation]
    validate_v1 = DataValidationOperator(
        task_id="validate_v1",
        data_uri="{{ ti.xcom_pull('generate_data')['versions'][0]['uri'] }}",
        schema_uri=f"{RUN_DIR}/schema/schema.pbtxt",
        on_anomaly="fail",
    )
    # [END howto_operator_data_validation]
    generate >> validate_v1

    for mode in ("fail", "skip", "warn"):
        # [START howto_operator_data_validation_drift]
        validate_v2 = DataValidationOperator(
            task_id=f"validate_v2_{mode}",
            data_uri="{{ ti.xcom_pull('generate_data')['versions'][1]['uri'] }}",
            schema_uri=f"{RUN_DIR}/schema/schema.pbtxt",
            previous_statistics_uri="{{ ti.xcom_pull('validate_v1')['statistics_uri'] }}",
            on_anomaly=mode,
        )
        # [END howto_operator_data_validation_drift]

        @task(task_id=f"train_{mode}")
        def train(summary: dict | None = None) -> str:
            return f"trained on {summary['data_uri'] if summary else '?'}"

        validate_v1 >> validate_v2
        train(validate_v2.output)

    # [START howto_operator_data_validation_champion_baseline]
    validate_against_champion = DataValidationOperator(
        task_id="validate_v2_against_champion",
        data_uri="{{ ti.xcom_pull('generate_data')['versions'][1]['uri'] }}",
        registered_model_name="{{ params.model_name }}",
        baseline="champion",  # drift against the champion's own training data, with its schema
        on_anomaly="warn",
    )
    # [END howto_operator_data_validation_champion_baseline]
    generate >> validate_against_champion
