"""
Extra links from a task to its records in MLflow.

Every link is built from what the task instance pushed to XCom while it ran (its MLflow run's UI
address, and a promotion's model version), so it opens the records of that very try. A link is
empty when the MLflow connection has no UI address or the task has not run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink, BaseXCom

from airflow_ml_provider.vocabulary import (
    ARTIFACT_EVALUATION_REPORT,
    ARTIFACT_VALIDATION_REPORT,
    XCOM_CACHE_SOURCE_URL,
    XCOM_RUN_URL,
)

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


def _run_url(ti_key: TaskInstanceKey) -> str:
    url = BaseXCom.get_value(ti_key=ti_key, key=XCOM_RUN_URL)  # type: ignore[arg-type]
    return str(url) if url else ""


def _source_url(ti_key: TaskInstanceKey) -> str:
    """The MLflow run whose result a cache hit reused (empty when the task ran its step)."""
    url = BaseXCom.get_value(ti_key=ti_key, key=XCOM_CACHE_SOURCE_URL)  # type: ignore[arg-type]
    return str(url) if url else ""


class MlflowRunLink(BaseOperatorLink):
    """Open the task instance's MLflow run (the URL its run pushed to XCom)."""

    name = "MLflow run"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return _run_url(ti_key)


class MlflowExperimentLink(BaseOperatorLink):
    """Open the MLflow experiment of the task's run: every DAG run of the DAG, side by side."""

    name = "MLflow experiment"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        url = _run_url(ti_key)
        return url.split("/runs/", 1)[0] if "/runs/" in url else ""


class _RunArtifactLink(BaseOperatorLink):
    """An artifact of the task's MLflow run, opened in the MLflow UI's artifact browser."""

    path = ""

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        url = _source_url(ti_key) or _run_url(ti_key)  # a cache hit's report is in its source run
        return f"{url}/artifacts/{self.path}" if url else ""


class ValidationReportLink(_RunArtifactLink):
    """The data validation report (statistics, anomalies, drift) the task logged."""

    name = "Validation report"
    path = ARTIFACT_VALIDATION_REPORT


class EvaluationReportLink(_RunArtifactLink):
    """The model evaluation report (metrics per slice, thresholds, candidate against baseline)."""

    name = "Evaluation report"
    path = ARTIFACT_EVALUATION_REPORT


class RegisteredModelVersionLink(BaseOperatorLink):
    """The registered model version a promotion moved the alias to."""

    name = "Registered model version"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        url = _run_url(ti_key)
        promoted: Any = BaseXCom.get_value(ti_key=ti_key, key=BaseXCom.XCOM_RETURN_KEY)  # type: ignore[arg-type]
        if "/#/" not in url or not isinstance(promoted, dict) or not promoted.get("version"):
            return ""
        base = url.split("/#/", 1)[0]
        return f"{base}/#/models/{quote(str(promoted['model_name']), safe='')}/versions/{promoted['version']}"
