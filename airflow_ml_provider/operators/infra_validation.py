"""Infra validation: the candidate must load and serve in a process of its own, fast enough."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.operators._placement import POD_PLACEMENT_TEMPLATE_FIELDS
from airflow_ml_provider.operators.base import MLflowTrackedOperator
from airflow_ml_provider.operators.step import ON_PROBLEM, MLStepOperator
from airflow_ml_provider.vocabulary import ARTIFACT_INFRA_VALIDATION_DIR, STEP_INFRA_VALIDATE

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_ml_provider.tracking import TaskRun

ON_FAILURE = ON_PROBLEM
ARTIFACT_DIR = ARTIFACT_INFRA_VALIDATION_DIR


class InfraValidationOperator(MLStepOperator):
    """
    Load the model with ``mlflow.pyfunc`` in a separate process, predict sample rows, time it.

    The checks (``load``, ``predict``, ``output_shape``, ``finite``, ``latency_p50``,
    ``latency_p99``) make the *infra blessing* that :class:`PromoteModelOperator` requires when
    given ``infra_validation=<this task>.output``. A model that does not load, hangs past the
    timeouts, returns NaN or the wrong number of predictions, or is too slow is not blessed.

    :param model_uri: the model (templated), e.g. ``"{{ ti.xcom_pull('train')['model_uri'] }}"``.
    :param data_uri: dataset version to take sample rows from (templated).
    :param data_format: ``"csv"``, ``"parquet"`` or None (templated).
    :param sample_rows: rows to predict at once.
    :param drop_columns: columns the model does not take (the label).
    :param max_latency_ms: ``{"p50": ms, "p99": ms}`` bounds on single-request latency (templated).
    :param batch_size: rows per timed request.
    :param requests: timed requests (after a warm-up).
    :param load_timeout: seconds to load the model.
    :param timeout: seconds to predict and time once loaded.
    :param on_failure: ``"fail"`` raises :class:`ModelNotBlessed`; ``"skip"`` skips downstream;
        ``"warn"`` records and goes on (a promotion then refuses the model).
    :param cache: reuse the result of an earlier run for the same model and data (see the "Step
        cache" page); off by default, since it measures latency on this worker.
    """

    dataset_inputs = ("data_uri",)
    cache_inputs = ("data_uri",)
    cache_artifacts = (ARTIFACT_DIR,)
    artifact_dir = ARTIFACT_DIR

    template_fields: Sequence[str] = (
        "model_uri",
        "data_uri",
        "data_format",
        "max_latency_ms",
        *POD_PLACEMENT_TEMPLATE_FIELDS,
        *MLflowTrackedOperator.template_fields,
    )
    template_fields_renderers = {"max_latency_ms": "json"}
    ui_color = "#e6dff2"

    def __init__(
        self,
        *,
        model_uri: Any,
        data_uri: str,
        data_format: str | None = None,
        sample_rows: int = 100,
        drop_columns: list[str] | None = None,
        max_latency_ms: dict[str, float] | None = None,
        batch_size: int = 1,
        requests: int = 50,
        load_timeout: float = 300.0,
        timeout: float = 300.0,
        on_failure: str = "fail",
        **kwargs: Any,
    ) -> None:
        super().__init__(step=STEP_INFRA_VALIDATE, **kwargs)
        self.model_uri = model_uri
        self.data_uri = data_uri
        self.data_format = data_format
        self.sample_rows = sample_rows
        self.drop_columns = drop_columns
        self.max_latency_ms = max_latency_ms
        self.batch_size = batch_size
        self.requests = requests
        self.load_timeout = load_timeout
        self.timeout = timeout
        self.on_failure = on_failure

    def _check_arguments(self) -> None:
        super()._check_arguments()
        self.check_policy("on_failure")
        if not self.model_uri or not isinstance(self.model_uri, str):
            raise ValueError(f"Task {self.task_id!r}: model_uri must be a model URI, got {self.model_uri!r}.")

    def build_spec(self, context: Context, run: TaskRun) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "model_uri": str(self.model_uri),
            "data_uri": str(self.data_uri),
            "format": self.data_format,
            "sample_rows": self.sample_rows,
            "drop_columns": self.drop_columns,
            "max_latency_ms": self.max_latency_ms,
            "batch_size": self.batch_size,
            "requests": self.requests,
            "load_timeout": self.load_timeout,
            "timeout": self.timeout,
            "tracking_uri": run.hook.settings.tracking_uri,
            "output_dir": self.output_dir(),
        }
        return {key: value for key, value in spec.items() if value is not None}

    def handle_result(
        self, context: Context, run: TaskRun, spec: dict[str, Any], result: dict[str, Any]
    ) -> Any:
        super().handle_result(context, run, spec, result)
        report = f"runs:/{run.run_id}/{ARTIFACT_DIR}/infra_validation.json" + (
            f" ({run.url})" if run.url else ""
        )
        blessing = {
            "blessed": bool(result["blessed"]),
            "model_uri": result["model_uri"],
            "failures": result["failures"],
            "checks": result["checks"],
            "latency_ms": result["latency_ms"],
            "mlflow_run_id": run.run_id,
            "report": report,
        }
        return blessing

    def apply_policy(self, context: Context, run: TaskRun, blessing: dict[str, Any]) -> dict[str, Any]:
        """Return a blessed record; else fail, skip or warn as ``on_failure`` says."""
        if blessing["blessed"]:
            return blessing
        from airflow_ml_provider.exceptions import ModelNotBlessed

        error = ModelNotBlessed(
            blessing["model_uri"], blessing["failures"], what="infra validation", report=blessing["report"]
        )
        self.gate(self.on_failure, error, argument="on_failure")
        return blessing
