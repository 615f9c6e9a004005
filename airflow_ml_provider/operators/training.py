"""Distributed TensorFlow training as an Airflow task: a gang of local processes or of Kubernetes pods."""

from __future__ import annotations

import re
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

    Checkpoints (``checkpoint_every``): the backup callback of ``ctx.callbacks()`` saves the
    training state every epoch or every N steps, and the chief uploads each save as a complete unit
    to ``checkpoint_uri`` (one directory per task instance under it:
    ``<uri>/<dag_id>/<run_id>/<task_id>[/<map_index>]``), or to the task's MLflow run
    (``checkpoints/``) without one. A gang restarted after a worker died (locally up to
    ``worker_restarts`` times), a retry of the task or a reattached one resumes from the last
    complete checkpoint instead of epoch 0; the MLflow run is tagged
    ``airflow_ml.training.resumed_from_epoch`` and XCom's ``resumed_from`` says where. Once the
    model is logged the checkpoints are marked finished, so that a cleared and rerun task trains
    from scratch.

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
    :param checkpoint_every: ``"epoch"``, an int N (every N training steps), or None (default: no
        checkpoints).
    :param checkpoint_uri: a directory every worker can read and write: a path on a shared
        filesystem, or an fsspec URI (``s3://bucket/checkpoints``) (templated). Default
        ``[ml_provider] checkpoint_uri``; unset: the task's MLflow run. Pods need the URI's
        credentials (``step_env`` or a Secret) and its fsspec package in the image.
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
        "checkpoint_uri",
        *POD_PLACEMENT_TEMPLATE_FIELDS,
        *MLflowTrackedOperator.template_fields,
    )
    runs_as_gang = True
    default_placement = "interpreter"
    gang_label = "Training gang"
    spec_artifact = ARTIFACT_TRAINING_SPEC
    dataset_inputs = ("train_uri", "eval_uri")
    cache_inputs = ("train_uri", "eval_uri", "schema_uri", "warm_start_from")
    cache_volatile = (*StepCacheMixin.cache_volatile, "dataset_version", "model_dir", "checkpoint")
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
        checkpoint_every: str | int | None = None,
        checkpoint_uri: str | None = None,
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
        self.checkpoint_every = checkpoint_every
        self.checkpoint_uri = checkpoint_uri

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
        self._check_checkpoint_arguments(where)

    def _check_checkpoint_arguments(self, where: str) -> None:
        every, uri = self.checkpoint_every, self.checkpoint_uri
        if (
            every is not None
            and every != "epoch"
            and (isinstance(every, bool) or not isinstance(every, int) or every < 1)
        ):
            raise ValueError(
                f"{where}: checkpoint_every must be 'epoch', an int > 0 (training steps) or None, got {every!r}."
            )
        if uri is not None and (not isinstance(uri, str) or not uri.strip()):
            raise ValueError(
                f"{where}: checkpoint_uri must be a directory the workers share (a path or an fsspec URI) "
                f"or None for the task's MLflow run, got {uri!r}."
            )
        if uri is not None and every is None:
            raise ValueError(
                f"{where}: checkpoint_uri={uri!r} is set but checkpoint_every is None; give "
                "checkpoint_every='epoch' (or every N steps) to take checkpoints."
            )
        base = self._checkpoint_base()
        if every is not None and base and "://" not in base and self.placement_name == "pod":
            said = f"checkpoint_uri={base!r}" if uri else f"[ml_provider] checkpoint_uri = {base}"
            raise ValueError(
                f"{where}: {said} is a local path, which pods do not share; give a URI every pod "
                "reaches (s3://..., gs://...), or none for the task's MLflow run."
            )

    def _checkpoint_base(self) -> str | None:
        from airflow_ml_provider.operators._placement import config_default

        base = self.checkpoint_uri or config_default("checkpoint_uri")
        return str(base) if base else None

    def checkpoint_location(self, context: Context) -> str | None:
        """
        Where this task instance's checkpoints go: ``<base>/<dag_id>/<run_id>/<task_id>[/<map_index>]``
        under ``checkpoint_uri`` (or ``[ml_provider] checkpoint_uri``), or None for the MLflow run.

        The same for every try of the task instance, so that a retry finds them; characters other
        than letters, digits, ``.``, ``_``, ``-`` become ``_``.
        """
        base = self._checkpoint_base()
        if not base:
            return None
        ti = context["ti"]
        parts = [ti.dag_id, ti.run_id, ti.task_id]
        map_index = getattr(ti, "map_index", None)
        if map_index is not None and map_index >= 0:
            parts.append(str(map_index))
        return "/".join([base.rstrip("/"), *(_safe_part(str(p)) for p in parts)])

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
        if self.checkpoint_every is not None:
            spec["checkpoint"] = {"every": self.checkpoint_every, "uri": self.checkpoint_location(context)}
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
            "resumed_from": result.get("resumed_from"),
        }
        if summary["resumed_from"]:
            self.log.info("Training resumed from its checkpoint at %s", summary["resumed_from"])
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


def _safe_part(text: str) -> str:
    """One path segment of a checkpoint location: safe in any filesystem and object store."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text).strip(".")
    return cleaned or "_"
