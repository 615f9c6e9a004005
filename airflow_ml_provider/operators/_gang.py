"""
Base of the operators whose step runs as a gang of workers: local processes or Kubernetes pods.

Training (a TensorFlow gang) and tuning (workers sharing a study) launch the same way: ``workers``
processes of ``python -m airflow_ml_provider.ml <step>`` on this Airflow worker, or an Indexed
Job of ``workers`` pods with a headless Service through the ``cncf.kubernetes`` provider. This
class holds the launchers; subclasses build the spec and say what success means.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.configuration import conf

from airflow_ml_provider.ml.training.cluster import DEFAULT_PORT, MAX_WORKERS
from airflow_ml_provider.operators.base import MLflowTrackedOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_ml_provider.hooks.kubernetes import GangStatus, TrainingGangHook
    from airflow_ml_provider.hooks.mlflow import MlflowSettings
    from airflow_ml_provider.runners.kubernetes_objects import GangPodSettings
    from airflow_ml_provider.tracking import TaskRun

LAUNCHERS = ("local", "kubernetes")
LOG_TAIL_LINES = 40
ERROR_PATIENCE = 300.0  # seconds of Kubernetes API errors before the wait gives up


class WorkerGangOperator(MLflowTrackedOperator):
    """
    An operator that runs its step on ``workers`` local processes or Kubernetes pods.

    :param workers: the gang size (templated).
    :param launcher: ``"local"`` or ``"kubernetes"``.
    :param python: the interpreter of the local workers, e.g. an environment with TensorFlow (templated).
    :param worker_env: extra environment variables of every worker (local processes and pods).
    :param kubernetes_conn_id: the ``kubernetes`` connection (cncf provider).
    :param image: the pods' image; it must hold this provider and the step's dependencies (templated).
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

    template_fields: Sequence[str] = ("workers", "python", "image", "namespace")
    #: the step every worker runs, and what the gang is called in messages
    gang_step = ""
    gang_label = "Gang"

    def __init__(
        self,
        *,
        workers: int = 1,
        launcher: str = "local",
        python: str | None = None,
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
        self.workers = workers
        self.launcher = launcher
        self.python = python
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

    # -- what subclasses say ---------------------------------------------------------------------

    def gang_deadline(self) -> float | None:
        """Seconds after which the gang is stopped (a Job's ``activeDeadlineSeconds``), or None."""
        return None

    def pod_extras(self) -> tuple[dict[str, str], list[str]]:
        """Environment variables and Secret names (``envFrom``) the pods need besides MLflow's."""
        return {}, []

    def gang_succeeded(self, context: Context, run: TaskRun) -> Any:
        """What the task returns once every pod of the gang succeeded."""
        raise NotImplementedError

    # -- arguments ------------------------------------------------------------------------------

    def check_gang_arguments(self) -> None:
        """ValueError naming the first bad launcher argument."""
        where = f"Task {self.task_id!r}"
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"{where}: launcher={self.launcher!r} is not one of {', '.join(LAUNCHERS)}.")
        if (
            isinstance(self.workers, bool)
            or not isinstance(self.workers, int)
            or not 1 <= self.workers <= MAX_WORKERS
        ):
            raise ValueError(f"{where}: workers must be an int in 1..{MAX_WORKERS}, got {self.workers!r}.")
        if self.launcher == "kubernetes" and not self.image:
            raise ValueError(
                f"{where}: launcher='kubernetes' needs image= (this provider and the step's dependencies)."
            )

    # -- local launcher -------------------------------------------------------------------------

    def local_worker_env(self, run: TaskRun) -> dict[str, str]:
        """MLflow's credentials, ``worker_env``, and the DAG folder on ``PYTHONPATH``."""
        env = {**run.hook.settings.child_environment(), **(self.worker_env or {})}
        dag_folder = os.path.dirname(getattr(self.dag, "fileloc", "") or "") if self.has_dag() else ""
        given = env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        paths = [p for p in (given, dag_folder) if p]
        if paths:  # the user's module may sit next to the DAG file, as Airflow's workers see it
            env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    def run_local_gang(
        self, spec: dict[str, Any], envs: list[dict[str, str]], env: dict[str, str], timeout: float | None
    ) -> list[dict[str, Any]]:
        """Run the step on one local process per entry of ``envs``; their results in worker order."""
        from airflow_ml_provider.runners.gang import GangRunner

        self._gang = GangRunner(envs, python=self.python, timeout=timeout, env=env)
        try:
            return self._gang.run(self.gang_step, spec, logger=self.log)
        finally:
            self._gang = None

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
        extra_env, extra_secrets = self.pod_extras()
        deadline = self.gang_deadline()
        return GangPodSettings(
            image=str(self.image),
            namespace=str(self.namespace),
            workers=self.workers,
            port=self.port,
            resources=self.container_resources,
            node_selector=self.node_selector,
            tolerations=self.tolerations,
            service_account=self.service_account,
            env={**env, **extra_env, **(self.worker_env or {})},
            run_as_user=self.pod_run_as_user,
            run_as_group=self.pod_run_as_group,
            labels=dict(self.labels or {}),
            image_pull_secrets=list(self.image_pull_secrets or []),
            env_from_secrets=[*([self.mlflow_secret] if self.mlflow_secret else []), *extra_secrets],
            active_deadline_seconds=int(deadline) if deadline else None,
        )

    def _gang_hook(self) -> TrainingGangHook:
        from airflow_ml_provider.hooks.kubernetes import TrainingGangHook

        return TrainingGangHook(self.kubernetes_conn_id)

    def _gang_name(self, context: Context) -> str:
        from airflow_ml_provider.runners.kubernetes_objects import gang_name

        ti = context["ti"]
        return gang_name(ti.dag_id, ti.run_id, ti.task_id, ti.map_index if ti.map_index is not None else -1)

    def run_pod_gang(self, context: Context, run: TaskRun, spec: dict[str, Any]) -> Any:
        """Start (or reattach to) the gang's Job, then defer or wait; ends in :meth:`complete_tracked`."""
        from airflow_ml_provider.runners.kubernetes_objects import headless_service, indexed_job

        settings = self.pod_settings(run.hook.settings)
        name = self._gang_name(context)
        hook = self._gang_hook()
        job, service = indexed_job(name, self.gang_step, spec, settings), headless_service(name, settings)
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
        what = f"{self.gang_label} {name} in namespace {namespace}"
        if status == "success":
            for pod, lines in hook.log_tail(name, namespace, lines=10).items():
                self.log.info("Last lines of %s:\n%s", pod, "\n".join(lines))
            hook.delete_service(name, namespace)  # the Job and its pods stay until their TTL, for their logs
            return self.gang_succeeded(context, run)
        tails = hook.log_tail(name, namespace, lines=LOG_TAIL_LINES) if status != "error" else {}
        if status == "error":
            # The API was unreachable: leave the gang alone; a retry reattaches to it.
            raise TrainingJobFailed(what, f"could not follow the Job: {message}", report=run.url)
        hook.delete(name, namespace)
        if status == "start_timeout":
            message = f"did not fully start within {self.start_timeout:.0f} s, so it was deleted: {message}"
        raise TrainingJobFailed(what, message, log_tails=tails, report=run.url)

    def on_kill(self) -> None:
        if self._gang is not None:
            self._gang.kill()
        if self._pod_gang is not None:
            name, namespace = self._pod_gang
            self.log.info("Task killed: deleting gang %s in %s", name, namespace)
            self._gang_hook().delete(name, namespace)
