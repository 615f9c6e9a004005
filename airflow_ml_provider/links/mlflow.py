"""Extra links from a task to its records in MLflow."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink, BaseXCom

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class MlflowRunLink(BaseOperatorLink):
    """Open the task instance's MLflow run (the URL its run pushed to XCom)."""

    name = "MLflow run"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow_ml_provider.tracking import XCOM_RUN_URL  # not needed to parse DAG files

        url = BaseXCom.get_value(ti_key=ti_key, key=XCOM_RUN_URL)  # type: ignore[arg-type]
        return str(url) if url else ""
