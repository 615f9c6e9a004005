"""Distributed TensorFlow training as an Airflow task: a gang of local processes or of Kubernetes pods."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.configuration import conf

from airflow_ml_provider.ml.training.cluster import DEFAULT_PORT, MAX_WORKERS
from airflow_ml_provider.ml.training.step import STRATEGIES
from airflow_ml_provider.operators.base import MLflowTrackedOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_ml_provider.hooks.kubernetes import GangStatus, TrainingGangHook
    from airflow_ml_provider.hooks.mlflow import MlflowSettings
    from airflow_ml_provider.runners.kubernetes_objects import GangPodSettings
    from airflow_ml_provider.tracking import TaskRun

STEP = "train_model"
LAUNCHERS = ("local", "kubernetes")
LOG_TAIL_LINES = 40
ERROR_PATIENCE = 300.0  # seconds of Kubernetes API errors before the wait gives up


class DistributedTrainingOperator(MLflowTrackedOperator):
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
    :param kubernetes_conn_id: the ``kubernetes`` connection (cncf provider).
    :param image: the pods' image; it must hold TensorFlow, this provider and ``run_fn``'s module (templated).
    :param namespace: where the Job and Service go (templated).
    :param container_resources: the pods' container resources, e.g.
        ``{"requests": {"cpu": "4"}, "limits": {"memory": "8Gi", "nvidia.com/gpu": 1}}``
        (``resources`` is Airflow's own executor setting).
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
        workers: int = 1,
        launcher: str = "local",
        warm_start_from: str | None = None,
        model_dir: str | None = None,
        seed: int | None = None,
        python: str | None = None,
        training_timeout: float | None = None,
        worker_env: dict[str, str] | None = None,
        kubernetes_conn_id: str = "kubernetes_default",
        image: str | None = None,
        namespace: str = "default",
        container_resources: dict[str, Any] | None = None,
        node_selector: dict[str, str] | None = None,
        tolerations: list[dict[str, Any]] | None = None,
        service_account: str | None = None,
        pod_run_as_user: int = 1000,
        pod_run_as_group: int = 1000,
        labels: dict[str, str] | None = None,
        image_pull_secrets: list[str] | None = None,
        mlflow_secret: str | None = None,
        port: int = DEFAULT_PORT,
        start_timeout: float = 600.0,
        poll_interval: float = 10.0,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.run_fn = run_fn
        self.train_uri = train_uri
        self.eval_uri = eval_uri
        self.data_format = data_format
        self.schema_uri = schema_uri
        self.hyperparameters = hyperparameters
        self.custom_config = custom_config
        self.strategy = strategy
        self.workers = workers
        self.launcher = launcher
        self.warm_start_from = warm_start_from
        self.model_dir = model_dir
        self.seed = seed
        self.python = python
        self.training_timeout = training_timeout
        self.worker_env = worker_env
        self.kubernetes_conn_id = kubernetes_conn_id
        self.image = image
        self.namespace = namespace
        self.container_resources = container_resources
        self.node_selector = node_selector
        self.tolerations = tolerations
        self.service_account = service_account
        self.pod_run_as_user = pod_run_as_user
        self.pod_run_as_group = pod_run_as_group
        self.labels = labels
        self.image_pull_secrets = image_pull_secrets
        self.mlflow_secret = mlflow_secret
        self.port = port
        self.start_timeout = start_timeout
        self.poll_interval = poll_interval
        self.deferrable = deferrable
        self._gang: Any = None
        self._pod_gang: tuple[str, str] | None = None

    # -- arguments and spec ---------------------------------------------------------------

    @property
    def strategy_name(self) -> str:
        if self.strategy:
            return self.strategy
        return "one_device" if self.workers == 1 else "multi_worker_mirrored"

    def _check_arguments(self) -> None:
        from airflow_ml_provider.ml.registry import step_reference

        where = f"Task {self.task_id!r}"
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"{where}: launcher={self.launcher!r} is not one of {', '.join(LAUNCHERS)}.")
        if (
            isinstance(self.workers, bool)
            or not isinstance(self.workers, int)
            or not 1 <= self.workers <= MAX_WORKERS
        ):
            raise ValueError(f"{where}: workers must be an int in 1..{MAX_WORKERS}, got {self.workers!r}.")
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
        if self.launcher == "kubernetes" and not self.image:
            raise ValueError(
                f"{where}: launcher='kubernetes' needs image= (TensorFlow + this provider + run_fn)."
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
        if self.launcher == "local":
            return self._finish(run, self._run_local(context, run, spec))
        return self._run_kubernetes(context, run, spec)

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

    # -- local launcher -----------------------------------------------------------------------

    def _worker_env(self, run: TaskRun) -> dict[str, str]:
        env = {**run.hook.settings.child_environment(), **(self.worker_env or {})}
        dag_folder = os.path.dirname(getattr(self.dag, "fileloc", "") or "") if self.has_dag() else ""
        given = env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        paths = [p for p in (given, dag_folder) if p]
        if paths:  # run_fn's module may sit next to the DAG file, as Airflow's workers see it
            env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    def _run_local(self, context: Context, run: TaskRun, spec: dict[str, Any]) -> dict[str, Any]:
        from airflow_ml_provider.ml.training.cluster import local_cluster, worker_environments
        from airflow_ml_provider.runners.gang import GangRunner

        if self.workers > 1:
            envs = worker_environments(local_cluster(self.workers))
        else:
            envs = [{}]
        self._gang = GangRunner(
            envs, python=self.python, timeout=self.training_timeout, env=self._worker_env(run)
        )
        try:
            results = self._gang.run(STEP, spec, logger=self.log)
        finally:
            self._gang = None
        return results[0]

    # -- Kubernetes launcher --------------------------------------------------------------------

    def pod_settings(self, mlflow: MlflowSettings) -> GangPodSettings:
        """What the gang's pods look like, with the MLflow server of ``mlflow`` (no credentials)."""
        from airflow_ml_provider.runners.kubernetes_objects import GangPodSettings

        if not mlflow.is_http:
            raise ValueError(
                f"Task {self.task_id!r}: the pods cannot reach the MLflow store {mlflow.tracking_uri!r}; "
                "give connection mlflow_default an http(s) tracking server for launcher='kubernetes'."
            )
        env = {"MLFLOW_TRACKING_URI": mlflow.tracking_uri, "MLFLOW_REGISTRY_URI": mlflow.registry_uri}
        if mlflow.insecure_tls:
            env["MLFLOW_TRACKING_INSECURE_TLS"] = "true"
        return GangPodSettings(
            image=str(self.image),
            namespace=str(self.namespace),
            workers=self.workers,
            port=self.port,
            resources=self.container_resources,
            node_selector=self.node_selector,
            tolerations=self.tolerations,
            service_account=self.service_account,
            env={**env, **(self.worker_env or {})},
            run_as_user=self.pod_run_as_user,
            run_as_group=self.pod_run_as_group,
            labels=dict(self.labels or {}),
            image_pull_secrets=list(self.image_pull_secrets or []),
            env_from_secrets=[self.mlflow_secret] if self.mlflow_secret else [],
            active_deadline_seconds=int(self.training_timeout) if self.training_timeout else None,
        )

    def _gang_hook(self) -> TrainingGangHook:
        from airflow_ml_provider.hooks.kubernetes import TrainingGangHook

        return TrainingGangHook(self.kubernetes_conn_id)

    def _gang_name(self, context: Context) -> str:
        from airflow_ml_provider.runners.kubernetes_objects import gang_name

        ti = context["ti"]
        return gang_name(ti.dag_id, ti.run_id, ti.task_id, ti.map_index if ti.map_index is not None else -1)

    def _run_kubernetes(self, context: Context, run: TaskRun, spec: dict[str, Any]) -> Any:
        from airflow_ml_provider.runners.kubernetes_objects import headless_service, indexed_job

        settings = self.pod_settings(run.hook.settings)
        name = self._gang_name(context)
        hook = self._gang_hook()
        job, service = indexed_job(name, STEP, spec, settings), headless_service(name, settings)
        self._pod_gang = (name, settings.namespace)
        self._replace_stale_gang(hook, job, name, settings.namespace)
        if hook.launch(job, service):
            self.log.info(
                "Reattached to gang %s in %s: it is still running this spec", name, settings.namespace
            )
        else:
            self.log.info(
                "Started gang %s: Indexed Job of %d pods in %s", name, self.workers, settings.namespace
            )
        started = time.time()
        if self.deferrable:
            from airflow_ml_provider.triggers.training_gang import TrainingGangTrigger

            self.defer(
                trigger=TrainingGangTrigger(
                    name=name,
                    namespace=settings.namespace,
                    workers=self.workers,
                    kubernetes_conn_id=self.kubernetes_conn_id,
                    started_at=started,
                    start_timeout=self.start_timeout,
                    poll_interval=self.poll_interval,
                ),
                method_name="execute_complete",
            )
        event = self._wait(hook, name, settings.namespace, started)
        return self.complete_tracked(context, run, event)

    def _replace_stale_gang(
        self, hook: TrainingGangHook, job: dict[str, Any], name: str, namespace: str
    ) -> None:
        """
        Delete a Job of this gang's name that a retry must not reattach to.

        A retry reattaches only to a gang that is still pending or running the same spec (the spec
        names the task's MLflow run, so it is the same across tries). A finished gang (failed, or
        succeeded before a clear) or one started with other arguments is replaced.
        """
        from airflow_ml_provider.runners.kubernetes_objects import SPEC_ANNOTATION

        existing = hook.pod_template_annotation(name, namespace, SPEC_ANNOTATION)
        if existing is None:
            return
        wanted = job["spec"]["template"]["metadata"]["annotations"][SPEC_ANNOTATION]
        status = hook.status(name, namespace, self.workers)
        if existing == wanted and status.phase in ("pending", "running"):
            return
        reason = "it ran another spec" if existing != wanted else f"it is {status.phase}"
        self.log.info("Replacing gang %s of an earlier try: %s", name, reason)
        hook.delete(name, namespace, wait=True)

    def _wait(self, hook: TrainingGangHook, name: str, namespace: str, started: float) -> dict[str, Any]:
        """Poll in this worker (not deferrable); the same events the trigger sends."""
        last_phase, failing_since = None, None
        while True:
            try:
                status: GangStatus = hook.status(name, namespace, self.workers)
            except Exception as err:
                # Ride out an API server restart, as the trigger does; give up after ERROR_PATIENCE.
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > max(ERROR_PATIENCE, 5 * self.poll_interval):
                    return {"name": name, "namespace": namespace, "status": "error", "message": str(err)}
                self.log.warning("Gang %s: cannot read its status (%s); retrying", name, err)
                time.sleep(min(60.0, self.poll_interval * 2))
                continue
            failing_since = None
            if status.phase != last_phase:
                self.log.info("Gang %s: %s (%s)", name, status.phase, status.message)
                last_phase = status.phase
            event = {"name": name, "namespace": namespace, "message": status.message}
            if status.phase == "succeeded":
                return {**event, "status": "success"}
            if status.phase in ("failed", "missing"):
                return {**event, "status": "failed"}
            if status.phase == "pending" and time.time() - started > self.start_timeout:
                return {**event, "status": "start_timeout"}
            time.sleep(self.poll_interval)

    def complete_tracked(self, context: Context, run: TaskRun, event: dict[str, Any]) -> Any:
        from airflow_ml_provider.exceptions import TrainingJobFailed

        name, namespace = str(event.get("name")), str(event.get("namespace"))
        self._pod_gang = (name, namespace)  # on_kill must find the gang after a deferral too
        hook = self._gang_hook()
        status, message = event.get("status"), str(event.get("message", ""))
        what = f"Training gang {name} in namespace {namespace}"
        if status == "success":
            for pod, lines in hook.log_tail(name, namespace, lines=10).items():
                self.log.info("Last lines of %s:\n%s", pod, "\n".join(lines))
            hook.delete_service(name, namespace)  # the Job and its pods stay until their TTL, for their logs
            return self._finish(run, self._result_from_run(run))
        tails = hook.log_tail(name, namespace, lines=LOG_TAIL_LINES) if status != "error" else {}
        if status == "error":
            # The API was unreachable: leave the gang alone; a retry reattaches to it.
            raise TrainingJobFailed(what, f"could not follow the Job: {message}", report=run.url)
        hook.delete(name, namespace)
        if status == "start_timeout":
            message = f"did not fully start within {self.start_timeout:.0f} s, so it was deleted: {message}"
        raise TrainingJobFailed(what, message, log_tails=tails, report=run.url)

    def _result_from_run(self, run: TaskRun) -> dict[str, Any]:
        """The chief's result, which it logged to the task's run (a pod's files are gone)."""
        from airflow_ml_provider.ml.training.step import RESULT_ARTIFACT

        workdir = tempfile.mkdtemp(prefix="ml-train-result-")
        try:
            path = run.hook.client.download_artifacts(run.run_id, RESULT_ARTIFACT, workdir)
            with open(path, encoding="utf-8") as handle:
                return dict(json.load(handle))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def on_kill(self) -> None:
        if self._gang is not None:
            self._gang.kill()
        if self._pod_gang is not None:
            name, namespace = self._pod_gang
            self.log.info("Task killed: deleting gang %s in %s", name, namespace)
            self._gang_hook().delete(name, namespace)
