"""Base class of the provider's operators: every task gets its own MLflow run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

from airflow_ml_provider.hooks.datasets import DEFAULT_MARKER
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
    :param completion_marker: for the operators that read a dataset version (their
        ``dataset_inputs``): the file whose presence says a version folder is complete (default
        ``_SUCCESS``; for the version a ``DatasetVersionTrigger`` delivered, that source's own
        marker). An incomplete version fails the task before anything runs. None turns the check
        off, for data that never gets a marker; set it for a whole DAG through ``default_args``.
    """

    template_fields: Sequence[str] = ("mlflow_experiment", "mlflow_tags")
    operator_extra_links: tuple[Any, ...] = (MlflowRunLink(), MlflowExperimentLink())
    ui_color = "#d9ecf2"
    #: attributes holding dataset versions the task reads; checked complete before it starts
    dataset_inputs: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        mlflow_conn_id: str = "mlflow_default",
        mlflow_experiment: str | None = None,
        mlflow_tags: dict[str, str] | None = None,
        completion_marker: str | None = DEFAULT_MARKER,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.mlflow_conn_id = mlflow_conn_id
        self.mlflow_experiment = mlflow_experiment
        self.mlflow_tags = mlflow_tags
        self.completion_marker = completion_marker

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
            self.check_dataset_inputs(context)
            return self.execute_tracked(context, run)

    def check_dataset_inputs(self, context: Context) -> None:
        """Fail (the task and its MLflow run) on an incomplete dataset version among ``dataset_inputs``."""
        if not self.dataset_inputs or self.completion_marker is None:
            return
        from airflow_ml_provider.hooks.completeness import check_inputs
        from airflow_ml_provider.versions import triggering_version

        inputs = {name: getattr(self, name, None) for name in self.dataset_inputs}
        check_inputs(self.task_id, inputs, self.completion_marker, triggering_version(context))

    def execute_complete(self, context: Context, event: dict[str, Any], **kwargs: Any) -> Any:
        """
        Resume after a deferral, inside the same MLflow run (it stayed RUNNING meanwhile).

        ``kwargs`` are those the operator passed to ``defer()``.
        """
        with self._tracked(context) as run:
            return self.complete_tracked(context, run, event, **kwargs)

    def execute_tracked(self, context: Context, run: TaskRun) -> Any:
        """Do the task's work; log into ``run``. The return value goes to XCom."""
        raise NotImplementedError

    def complete_tracked(self, context: Context, run: TaskRun, event: dict[str, Any], **kwargs: Any) -> Any:
        """Finish the work after the trigger fired ``event`` (for operators that defer)."""
        raise NotImplementedError
