"""Base class of the provider's operators: every task gets its own MLflow run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_ml_provider.links.mlflow import MlflowExperimentLink, MlflowRunLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_ml_provider.tracking import TaskRun


class MLflowTrackedOperator(BaseOperator):
    """
    An operator whose work is recorded in a nested MLflow run of the DAG run's parent run.

    Subclasses implement :meth:`execute_tracked`. The run is tagged with the task instance
    (``airflow.dag_id``, ``airflow.run_id``, ``airflow.task_id``, ``airflow.map_index``,
    ``airflow.try_number``), resumed on retry, and ended FINISHED or FAILED with the task.

    :param mlflow_conn_id: connection of type ``mlflow``.
    :param mlflow_experiment: experiment name (templated); defaults to the dag_id. Set it for a
        whole DAG through ``default_args``.
    :param mlflow_tags: extra tags for the task's run (templated).
    """

    template_fields: Sequence[str] = ("mlflow_experiment", "mlflow_tags")
    operator_extra_links: tuple[Any, ...] = (MlflowRunLink(), MlflowExperimentLink())
    ui_color = "#d9ecf2"

    def __init__(
        self,
        *,
        mlflow_conn_id: str = "mlflow_default",
        mlflow_experiment: str | None = None,
        mlflow_tags: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.mlflow_conn_id = mlflow_conn_id
        self.mlflow_experiment = mlflow_experiment
        self.mlflow_tags = mlflow_tags

    def _tracked(self, context: Context) -> Any:
        from airflow_ml_provider.tracking import tracked_task  # not needed to parse DAG files

        return tracked_task(
            context,
            mlflow_conn_id=self.mlflow_conn_id,
            experiment_name=self.mlflow_experiment,
            tags={str(k): str(v) for k, v in (self.mlflow_tags or {}).items()},
        )

    def execute(self, context: Context) -> Any:
        with self._tracked(context) as run:
            return self.execute_tracked(context, run)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Resume after a deferral, inside the same MLflow run (it stayed RUNNING meanwhile)."""
        with self._tracked(context) as run:
            return self.complete_tracked(context, run, event)

    def execute_tracked(self, context: Context, run: TaskRun) -> Any:
        """Do the task's work; log into ``run``. The return value goes to XCom."""
        raise NotImplementedError

    def complete_tracked(self, context: Context, run: TaskRun, event: dict[str, Any]) -> Any:
        """Finish the work after the trigger fired ``event`` (for operators that defer)."""
        raise NotImplementedError
