"""
Example: every task of a DAG run recorded in MLflow.

Generates two versions of the demo dataset, then describes each version in a mapped task. In
MLflow the DAG run is one parent run (experiment ``example_ml_tracking``) with a nested run per
task instance, tagged with the dag_id, run_id, task_id, map_index and try_number. Each task's
"MLflow run" extra link opens its run.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task

from airflow_ml_provider.operators.step import MLStepOperator

# [START howto_operator_ml_step]
with DAG(
    dag_id="example_ml_tracking",
    schedule=None,
    catchup=False,
    render_template_as_native_obj=True,
    params={
        "data_root": Param("/tmp/airflow-ml-provider/demo-data", type="string"),
        "versions": Param(2, type="integer", minimum=1, maximum=20),
        "rows": Param(2000, type="integer", minimum=10),
    },
    default_args={"mlflow_conn_id": "mlflow_default"},
    tags=["example", "ml"],
) as dag:
    generate = MLStepOperator(
        task_id="generate_data",
        step="generate_dataset",
        spec={
            "root": "{{ params.data_root }}/{{ run_id | replace(':', '-') | replace('+', '-') }}",
            "versions": "{{ params.versions }}",
            "rows": "{{ params.rows }}",
            "knobs_per_version": {"2": {"drift": 0.5}},
        },
    )

    @task
    def version_specs(generated: dict) -> list[dict]:
        return [{"uri": version["uri"]} for version in generated["versions"]]

    MLStepOperator.partial(task_id="describe_version", step="describe_dataset").expand(
        spec=version_specs(generate.output)
    )
# [END howto_operator_ml_step]
