"""Distributed TensorFlow training as an Airflow task: a gang of local processes or of Kubernetes pods."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.ml.scratch import make_scratch_dir
from airflow_ml_provider.ml.training.step import STRATEGIES
from airflow_ml_provider.operators._cache import StepCacheMixin
from airflow_ml_provider.operators._gang import WorkerGangOperator
from airflow_ml_provider.operators.base import MLflowTrackedOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_ml_provider.tracking import TaskRun

STEP = "train_model"


class DistributedTrainingOperator(StepCacheMixin, WorkerGangOperator):
    """
    Train a TensorFlow model with a ``run_fn(ctx)`` of yours, on one or many workers.

    Every worker runs the ``train_model`` step: it builds the ``tf.distribute`` strategy, calls
    ``run_fn`` with a :class:`~airflow_ml_provider.ml.training.context.TrainingContext` (data
    locations, schema, hyperparameters, strategy, role, warm-start model, MLflow run), and exports
    the returned model. The chief (worker 0) logs params, per-epoch metrics and the model, as an
    ``mlflow.pyfunc`` model over the SavedModel, to this task's MLflow run; XCom gets ``model_uri``.

    Launchers:

    - ``local``: ``workers`` processes on this Airflow worker, ``TF_CONFIG`` from free localhost
      ports. Their output streams into the task log as ``[worker i] ...``; a worker that dies stops
      the gang at once and fails the task with its last lines.
    - ``kubernetes``: an Indexed Job of ``workers`` pods plus a headless Service, through the
      ``cncf.kubernetes`` provider's connection; each pod derives ``TF_CONFIG`` from its completion
      index. The wait is deferrable; a retry reattaches to the Job of its earlier try; a gang that
      does not fully start within ``start_timeout`` is deleted and the task fails.

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
    :param launcher: ``"local"`` or ``"kubernetes"``.
    :param warm_start_from: a model to start from, e.g. ``models:/churn@champion`` (templated).
        ``run_fn`` applies it with ``ctx.load_warm_start(model)``.
    :param model_dir: a local directory for the chief's SavedModel, kept after the task (templated).
    :param seed: random seed set in every worker.
    :param python: the interpreter of the local workers, e.g. an environment with TensorFlow (templated).
    :param training_timeout: seconds after which the gang is stopped: the local processes are
        killed; on Kubernetes it is the Job's ``activeDeadlineSeconds``.
    :param worker_env: extra environment variables of every worker (local processes and pods).
    :param cache: reuse the model of an earlier run with the same data, spec, workers and
        ``run_fn`` source file (see the "Step cache" page); off by default.
    :param kubernetes_conn_id: the ``kubernetes`` connection (cncf provider).
    :param image: the pods' image; it must hold TensorFlow, this provider and ``run_fn``'s module (templated).
    :param namespace: where the Job and Service go (templated).
    :param container_resources: the pods' container resources, e.g.
        ``{"requests": {"cpu": "4"}, "limits": {"memory": "8Gi", "nvidia.com/gpu": 1}}``
        (``resources`` is Airflow's own executor setting). None: requests 1 CPU and 2 GiB, limits
        2 CPUs and 4 GiB; ``{}``: no requests or limits.
    :param node_selector: node labels the pods need.
    :param tolerations: pod tolerations.
    :param service_account: the pods' service account.
    :param pod_run_as_user: the pods' non-root uid (``run_as_user`` is Airflow's own impersonation).
    :param pod_run_as_group: the pods' gid.
    :param labels: extra labels on the Job, pods and Service.
    :param image_pull_secrets: names of image pull secrets.
    :param mlflow_secret: a Secret whose keys (``MLFLOW_TRACKING_TOKEN`` ...) become the pods' env.
    :param port: the port of the workers' collective ops.
    :param start_timeout: seconds for all pods to be running before the gang is failed and removed.
    :param poll_interval: seconds between status checks of the Job.
    :param deferrable: wait for the Job in the triggerer; defaults to ``[operators] default_deferrable``.
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
        "python",
        "image",
        "namespace",
        *MLflowTrackedOperator.template_fields,
    )
    gang_step = STEP
    gang_label = "Training gang"
    dataset_inputs = ("train_uri", "eval_uri")
    cache_inputs = ("train_uri", "eval_uri", "schema_uri", "warm_start_from")
    cache_volatile = (*StepCacheMixin.cache_volatile, "dataset_version", "model_dir")
    cache_artifacts = ("training",)
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
        cache: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cache = cache
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
        self.training_timeout = training_timeout

    # -- arguments and spec ---------------------------------------------------------------

    @property
    def strategy_name(self) -> str:
        if self.strategy:
            return self.strategy
        return "one_device" if self.workers == 1 else "multi_worker_mirrored"

    def _check_arguments(self) -> None:
        from airflow_ml_provider.ml.registry import step_reference

        where = f"Task {self.task_id!r}"
        self.check_gang_arguments()
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

    def _log_start(self, run: TaskRun, spec: dict[str, Any]) -> None:
        run.log_params({"launcher": self.launcher, "workers": self.workers, "strategy": self.strategy_name})
        run.set_tags({"airflow_ml.step": STEP, "airflow_ml.launcher": self.launcher})
        run.flush()
        run.hook.client.log_text(run.run_id, json.dumps(spec, indent=2, sort_keys=True), "training/spec.json")

    def execute_tracked(self, context: Context, run: TaskRun) -> Any:
        self._check_arguments()
        spec = self.build_spec(context, run)
        self._log_start(run, spec)
        key = self.step_cache_key(STEP, spec)
        hit = self.find_cached(run, key)
        if key is not None and hit is not None:
            return self._trained(context, run, self.replay_cached(context, run, key, hit))
        if self.launcher == "local":
            value = self._finish(run, self._run_local(run, spec))
            self.record_cached(run, key, STEP, value)
            return self._trained(context, run, value)
        return self.run_pod_gang(context, run, spec)

    def _trained(self, context: Context, run: TaskRun, value: dict[str, Any]) -> dict[str, Any]:
        from airflow_ml_provider import freshness

        freshness.record(context, run, "trained")
        return value

    # -- the step cache (off by default: training is costly but rarely bit-for-bit repeatable) --

    def cache_code(self, spec: dict[str, Any]) -> list[str]:
        return [self.run_fn]

    def cache_extra(self) -> dict[str, Any]:
        return {"launcher": self.launcher, "workers": self.workers, "image": getattr(self, "image", None)}

    def cache_hit_usable(self, run: TaskRun, hit: Any) -> bool:
        uri = str((hit.result or {}).get("model_uri") or "")
        if not uri.startswith("models:/m-"):
            return bool(uri)
        model_id = uri[len("models:/") :]
        try:
            return bool(run.hook.client.list_logged_model_artifacts(model_id))
        except Exception:
            return False

    def _finish(self, run: TaskRun, result: dict[str, Any]) -> dict[str, Any]:
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

    # -- launchers -----------------------------------------------------------------------------

    def _run_local(self, run: TaskRun, spec: dict[str, Any]) -> dict[str, Any]:
        from airflow_ml_provider.ml.training.cluster import local_cluster, worker_environments

        envs = worker_environments(local_cluster(self.workers)) if self.workers > 1 else [{}]
        results = self.run_local_gang(spec, envs, self.local_worker_env(run), self.training_timeout)
        return results[0]

    def gang_deadline(self) -> float | None:
        return self.training_timeout

    def gang_succeeded(self, context: Context, run: TaskRun) -> Any:
        value = self._finish(run, self._result_from_run(run))
        if self.cache_enabled():
            self.record_cached(run, self.step_cache_key(STEP, self.build_spec(context, run)), STEP, value)
        return self._trained(context, run, value)

    def _result_from_run(self, run: TaskRun) -> dict[str, Any]:
        """The chief's result, which it logged to the task's run (a pod's files are gone)."""
        from airflow_ml_provider.ml.training.step import RESULT_ARTIFACT

        workdir = make_scratch_dir("ml-train-result")
        try:
            path = run.hook.client.download_artifacts(run.run_id, RESULT_ARTIFACT, workdir)
            with open(path, encoding="utf-8") as handle:
                return dict(json.load(handle))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
