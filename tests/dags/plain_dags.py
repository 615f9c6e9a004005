"""A DAG that uses no operator of this provider: its runs have no ML lineage (an empty state)."""

from airflow.sdk import dag, task


@dag(dag_id="lineage_plain", schedule=None)
def lineage_plain():
    @task
    def hello() -> int:
        return 1

    hello()


lineage_plain()
