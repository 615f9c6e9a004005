"""Distributed TensorFlow training as an Airflow task: a gang of local processes or of Kubernetes pods."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.ml.training.step import STRATEGIES
from airflow_ml_provider.operators._cache import StepCacheMixin
from airflow_ml_provider.operators._placement import POD_PLACEMENT_TEMPLATE_FIELDS
from airflow_ml_provider.operators.base import MLflowTrackedOperator
from airflow_ml_provider.operators.step import MLStepOperator
from airflow_ml_provider.vocabulary import (
    ARTIFACT_TRAINING_DIR,
    ARTIFACT_TRAINING_RESULT,
    ARTIFACT_TRAINING_SPEC,
    STEP_TRAIN_MODEL,
    TAG_LAUNCHER,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_ml_provider.tracking import TaskRun

STEP = STEP_TRAIN_MODEL


class DistributedTrainingOperator(MLStepOperator):
    """
    Train a TensorFlow model with a ``run_fn(ctx)`` of yours, on one or many workers.

    Every worker runs the ``train_model`` step: it builds the ``tf.distribute`` strategy, calls
    ``run_fn`` with a :class:`~airflow_ml_provider.ml.training.context.TrainingContext` (data
    locations, schema, hyperparameters, strategy, role, warm-start model, MLflow run), and exports
    the returned model. The chief (worker 0) logs params, per-epoch metrics and the model, as an
    ``mlflow.pyfunc`` model over the SavedModel, to this task's MLflow run; XCom gets ``model_uri``.

    Placements (see the "Placements" page):

    - ``placement="interpreter"`` (default): ``workers`` processes on this Airflow worker,
      ``TF_CONFIG`` from free localhost ports. Their output streams into the task log as
      ``[worker i] ...``; a worker that dies stops the gang at once and fails the task with its
      last lines.
    - ``placement="pod"``: an Indexed Job of ``workers`` pods plus a headless Service, through the
      ``cncf.kubernetes`` provider's connection; each pod derives ``TF_CONFIG`` from its completion
      index. The wait is deferrable; a retry reattaches to the Job of its earlier try; a gang that
      does not fully start within ``start_timeout`` is deleted and the task fails.
    - ``placement="worker"``: one worker, in the Airflow worker's own process.

    :param run_fn: ``"package.module:function"`` (templated); importable in the workers.
    :param train_uri: the training data, a dataset version directory or file (templated).
    :param eval_uri: the evaluation data (templated).
    :param data_format: ``"csv"``, ``"parquet"`` or None (by extension) (templated).
    :param schema_uri: the curated TFDV schema (templated).
    :param hyperparameters: passed to ``ctx.hyperparameters``, e.g. a tuning task's XCom (templated).
    :param custom_config: anything else for ``run_fn`` (templated).
    :param strategy: ``one_device``, ``mirrored`` or ``multi_worker_mirrored``; default
        ``one_device`` for one worker, ``multi_worker_mirrored`` for more.
    :param workers: the gang size (templated).
    :param warm_start_from: a model to start from, e.g. ``models:/churn@champion`` (templated).
        ``run_fn`` applies it with ``ctx.load_warm_start(model)``.
    :param model_dir: a local directory for the chief's SavedModel, kept after the task (templated).
    :param seed: random seed set in every worker.
    :param training_timeout: deprecated name of ``step_timeout``.
    :param cache: reuse the model of an earlier run with the same data, spec, workers and
        ``run_fn`` source file (see the "Step cache" page); off by default.

    The placement arguments (``placement``, ``python``, ``step_env``, ``step_timeout``, ``image`` —
    which must hold TensorFlow, this provider and ``run_fn``'s module —, ``namespace``, the other
    pod settings, ``port``, ``start_timeout``, ``poll_interval``, ``deferrable``) are those of
    every step operator: see :class:`~airflow_ml_provider.operators._placement.StepPlacement`.
    """

    template_fields: Sequence[str] = (
        "run_fn",
        "train_uri",
        "eval_uri",
        "workers",
        "data_format",
        "schema_uri",
        "hyperparameters",
        "custom_config",
        "warm_start_from",
        "model_dir",
        *POD_PLACEMENT_TEMPLATE_FIELDS,
        *MLflowTrackedOperator.template_fields,
    )
    runs_as_gang = True
    default_placement = "interpreter"
    gang_label = "Training gang"
    spec_artifact = ARTIFACT_TRAINING_SPEC
    dataset_inputs = ("train_uri", "eval_uri")
    cache_inputs = ("train_uri", "eval_uri", "schema_uri", "warm_start_from")
    cache_volatile = (*StepCacheMixin.cache_volatile, "dataset_version", "model_dir")
    cache_artifacts = (ARTIFACT_TRAINING_DIR,)
    template_fields_renderers = {"hyperparameters": "json", "custom_config": "json"}
    ui_color = "#f6e3c9"

    def __init__(
        self,
        *,
        run_fn: str,
        train_uri: str,
        eval_uri: str | None = None,
        data_format: str | None = None,
        schema_uri: str | None = None,
        hyperparameters: dict[str, Any] | None = None,
        custom_config: dict[str, Any] | None = None,
        strategy: str | None = None,
        warm_start_from: str | None = None,
        model_dir: str | None = None,
        seed: int | None = None,
        training_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        if training_timeout is not None:
            from airflow_ml_provider.operators._placement import _deprecated

            _deprecated("training_timeout", "step_timeout")
            kwargs.setdefault("step_timeout", training_timeout)
        super().__init__(step=STEP, **kwargs)
        self.run_fn = run_fn
        self.train_uri = train_uri
        self.eval_uri = eval_uri
        self.data_format = data_format
        self.schema_uri = schema_uri
        self.hyperparameters = hyperparameters
        self.custom_config = custom_config
        self.strategy = strategy
        self.warm_start_from = warm_start_from
        self.model_dir = model_dir
        self.seed = seed

    @property
    def training_timeout(self) -> float | None:
        return self.step_timeout

    # -- arguments and spec ---------------------------------------------------------------

    @property
    def strategy_name(self) -> str:
        if self.strategy:
            return self.strategy
        return "one_device" if self.workers == 1 else "multi_worker_mirrored"

    def _check_arguments(self) -> None:
        from airflow_ml_provider.ml.registry import step_reference

        where = f"Task {self.task_id!r}"
        self.check_placement()
        if self.strategy_name not in STRATEGIES:
            raise ValueError(f"{where}: strategy={self.strategy!r} is not one of {', '.join(STRATEGIES)}.")
        if self.workers > 1 and self.strategy_name != "multi_worker_mirrored":
            raise ValueError(
                f"{where}: strategy={self.strategy_name!r} runs in one process but workers={self.workers}; "
                "use strategy='multi_worker_mirrored' for several workers."
            )
        if not isinstance(self.run_fn, str) or ":" not in self.run_fn:
            raise ValueError(f"{where}: run_fn must be 'package.module:function', got {self.run_fn!r}.")
        step_reference(self.run_fn)
        if not self.train_uri:
            raise ValueError(f"{where}: train_uri is empty (after rendering the template).")
        for name in ("hyperparameters", "custom_config"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, dict):
                raise TypeError(
                    f"{where}: {name} must be a dict (use render_template_as_native_obj=True when it comes "
                    f"from XCom), got {type(value).__name__}: {str(value)[:100]!r}."
                )

    def build_spec(self, context: Context, run: TaskRun) -> dict[str, Any]:
        """The ``train_model`` spec every worker gets."""
        from airflow_ml_provider.versions import triggering_version

        spec: dict[str, Any] = {
            "run_fn": self.run_fn,
            "train_uri": str(self.train_uri),
            "eval_uri": self.eval_uri,
            "data_format": self.data_format,
            "schema_uri": self.schema_uri,
            "dataset_version": triggering_version(context),
            "hyperparameters": self.hyperparameters or {},
            "custom_config": self.custom_config or {},
            "strategy": self.strategy_name,
            "warm_start_from": self.warm_start_from,
            "model_dir": self.model_dir,
            "seed": self.seed,
            "mlflow": {"run_id": run.run_id, "experiment_id": run.experiment_id},
        }
        return {k: v for k, v in spec.items() if v is not None}

    def start_params(self, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "launcher": self.launcher,
            "placement": self.placement_name,
            "workers": self.workers,
            "strategy": self.strategy_name,
        }

    def start_tags(self, spec: dict[str, Any]) -> dict[str, Any]:
        return {**super().start_tags(spec), TAG_LAUNCHER: self.launcher}

    def apply_policy(self, context: Context, run: TaskRun, result: Any) -> Any:
        """Training has no gate: record when the model was trained (a cached one too)."""
        from airflow_ml_provider import freshness

        freshness.record(context, run, "trained")
        return result

    # -- the step cache (off by default: training is costly but rarely bit-for-bit repeatable) --

    def cache_code(self, spec: dict[str, Any]) -> list[str]:
        return [self.run_fn]

    def cache_extra(self) -> dict[str, Any]:
        return {"launcher": self.launcher, "workers": self.workers, "image": self.image}

    def cache_hit_usable(self, run: TaskRun, hit: Any) -> bool:
        uri = str((hit.result or {}).get("model_uri") or "")
        if not uri.startswith("models:/m-"):
            return bool(uri)
        model_id = uri[len("models:/") :]
        try:
            return bool(run.hook.client.list_logged_model_artifacts(model_id))
        except Exception:
            return False

    def handle_result(
        self, context: Context, run: TaskRun, spec: dict[str, Any], result: dict[str, Any]
    ) -> dict[str, Any]:
        """The XCom value: where the model is and how training went."""
        if "model_uri" not in result:
            raise RuntimeError(
                f"Task {self.task_id!r}: training ended without a logged model; see the chief's log above."
            )
        summary = {
            "model_uri": result["model_uri"],
            "mlflow_run_id": run.run_id,
            "strategy": result.get("strategy"),
            "workers": result.get("workers"),
            "epochs": result.get("epochs"),
            "final_metrics": result.get("final_metrics", {}),
            "train_seconds": result.get("train_seconds"),
            "saved_model_dir": result.get("saved_model_dir"),
            "warm_started_from": result.get("warm_started_from"),
        }
        self.log.info(
            "Trained %s on %s worker(s): %s",
            summary["model_uri"],
            summary["workers"],
            summary["final_metrics"],
        )
        return summary

    # -- placements -----------------------------------------------------------------------------

    def gang_environments(self) -> list[dict[str, str]]:
        """TF_CONFIG of every local worker: free localhost ports."""
        from airflow_ml_provider.ml.training.cluster import local_cluster, worker_environments

        return worker_environments(local_cluster(self.workers)) if self.workers > 1 else [{}]

    def pod_result(self, run: TaskRun, spec: dict[str, Any]) -> dict[str, Any]:
        """The chief's result, which it logged to the task's run (a pod's files are gone)."""
        from airflow_ml_provider.operators._placement import download_json

        return download_json(run, ARTIFACT_TRAINING_RESULT)
