"""
Baseline for ``benchmarks/parse_overhead.py``: ``example_ml_tracking`` built from plain operators.

The same DAG shape as ``dags_examples/example_ml_tracking.py`` (same DAG arguments and params, a
templated first task, a ``@task`` and a task mapped with ``.partial().expand()``), but with
``PythonOperator`` from the standard provider instead of ``MLStepOperator``. The callables do no
real work: this file exists only to be parsed.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, Param, task


def generate_dataset(**spec: Any) -> dict[str, Any]:
    return {"versions": [{"uri": f"{spec['root']}/v{i}"} for i in range(int(spec["versions"]))]}


def describe_dataset(uri: str) -> dict[str, Any]:
    return {"uri": uri}


with DAG(
    dag_id="plain_tracking_equivalent",
    schedule=None,
    catchup=False,
    render_template_as_native_obj=True,
    params={
        "data_root": Param("/tmp/airflow-ml-provider/demo-data", type="string"),
        "versions": Param(2, type="integer", minimum=1, maximum=20),
        "rows": Param(2000, type="integer", minimum=10),
    },
    default_args={"owner": "airflow"},
    tags=["example", "ml"],
) as dag:
    generate = PythonOperator(
        task_id="generate_data",
        python_callable=generate_dataset,
        op_kwargs={
            "root": "{{ params.data_root }}/{{ run_id | replace(':', '-') | replace('+', '-') }}",
            "versions": "{{ params.versions }}",
            "rows": "{{ params.rows }}",
            "knobs_per_version": {"2": {"drift": 0.5}},
        },
    )

    @task
    def version_specs(generated: dict) -> list[dict]:
        return [{"uri": version["uri"]} for version in generated["versions"]]

    PythonOperator.partial(task_id="describe_version", python_callable=describe_dataset).expand(
        op_kwargs=version_specs(generate.output)
    )
