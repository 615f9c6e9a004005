"""
Where a step runs, one vocabulary for every operator: ``placement`` (``worker``, ``interpreter``,
``pod``) and ``workers`` (a gang of processes or pods, for training and tuning). The "Placements"
page has the table; defaults come from Airflow's ``[ml_provider]`` configuration section.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.configuration import conf

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_ml_provider.hooks.kubernetes import TrainingGangHook
    from airflow_ml_provider.hooks.mlflow import MlflowSettings
    from airflow_ml_provider.runners.kubernetes_objects import GangPodSettings
    from airflow_ml_provider.tracking import TaskRun

SECTION = "ml_provider"
POD_PLACEMENT_TEMPLATE_FIELDS = ("python", "image", "namespace")
# The keyword arguments of every step operator that say where and how its step runs.
PLACEMENT_ARGUMENTS = (
    "placement", "workers", "python", "step_env", "step_timeout", "runner", "launcher", "worker_env",
    "kubernetes_conn_id", "image", "namespace", "container_resources", "node_selector", "tolerations",
    "service_account", "pod_run_as_user", "pod_run_as_group", "labels", "image_pull_secrets",
    "mlflow_secret", "port", "start_timeout", "poll_interval", "deferrable", "gpus", "gpu_resource",
    "affinity", "priority_class_name", "queue_name", "admission_timeout", "worker_restarts", "durable",
)  # fmt: skip


def _deprecated(old: str, new: str) -> None:
    from airflow.exceptions import AirflowProviderDeprecationWarning

    warnings.warn(
        f"{old} is deprecated; use {new} (see the 'Placements' page).",
        AirflowProviderDeprecationWarning,
        stacklevel=4,
    )


def config_default(key: str, fallback: Any = None) -> Any:
    """A setting of the provider's ``[ml_provider]`` section, or ``fallback``."""
    value = conf.get(SECTION, key, fallback=None)
    return fallback if value in (None, "") else value


def warm_settings() -> dict[str, Any]:
    """The runners' warm-start settings: ``[ml_provider] warm_steps`` and ``warm_idle_seconds``."""
    return {
        "warm": conf.getboolean(SECTION, "warm_steps", fallback=True),
        "warm_idle_seconds": conf.getfloat(SECTION, "warm_idle_seconds", fallback=600.0),
    }


class StepPlacement:
    """
    The placement arguments every step operator takes, and running the step there.

    :param placement: ``"worker"``, ``"interpreter"`` or ``"pod"``; None takes
        ``[ml_provider] default_placement``, else ``"interpreter"`` when ``[ml_provider] step_python``
        is set, else the operator's own default.
    :param workers: how many processes or pods run the step (templated); above 1 only for the
        steps that run as a gang (training, tuning).
    :param python: the interpreter of ``placement="interpreter"`` (templated); default
        ``[ml_provider] step_python``, else the worker's own.
    :param step_env: extra environment variables of the step (processes and pods).
    :param step_timeout: seconds after which the step is stopped: local processes are killed; for
        pods it is the Job's ``activeDeadlineSeconds``.
    :param kubernetes_conn_id: the ``kubernetes`` connection (cncf provider); default
        ``[ml_provider] kubernetes_conn_id``, else ``kubernetes_default``.
    :param image: the pods' image (templated); it must hold this provider and the step's
        dependencies; default ``[ml_provider] step_image``.
    :param namespace: where the Job goes (templated); default ``[ml_provider] step_namespace``,
        else ``default``.
    :param container_resources: the pods' container resources, e.g.
        ``{"requests": {"cpu": "4"}, "limits": {"memory": "8Gi", "nvidia.com/gpu": 1}}``
        (``resources`` is Airflow's own executor setting). None: ``[ml_provider] step_resources``
        (JSON), else requests 1 CPU and 2 GiB, limits 2 CPUs and 4 GiB; ``{}``: no requests or limits.
    :param node_selector: node labels the pods need.
    :param tolerations: pod tolerations.
    :param service_account: the pods' service account; default ``[ml_provider] step_service_account``.
    :param pod_run_as_user: the pods' non-root uid (``run_as_user`` is Airflow's own impersonation).
    :param pod_run_as_group: the pods' gid.
    :param labels: extra labels on the Job, pods and Service.
    :param image_pull_secrets: names of image pull secrets.
    :param mlflow_secret: a Secret whose keys (``MLFLOW_TRACKING_TOKEN`` ...) become the pods' env.
    :param port: the port of a gang's collective ops (default 2222).
    :param start_timeout: seconds for every pod to be running before the Job is failed and removed.
    :param poll_interval: seconds between status checks of the Job.
    :param deferrable: wait for the pods in the triggerer; defaults to ``[operators] default_deferrable``.
    :param gpus: accelerators per pod (limits and requests of ``gpu_resource``); default 0.
    :param gpu_resource: the extended resource of ``gpus``; default ``nvidia.com/gpu``.
    :param affinity: the pods' affinity, in Kubernetes' dict form (``nodeAffinity``, ``podAffinity``,
        ``podAntiAffinity``).
    :param priority_class_name: the pods' PriorityClass; default ``[ml_provider]
        step_priority_class_name``; ``""`` sets none whatever the configuration says.
    :param queue_name: a Kueue LocalQueue of the namespace: the Job is created suspended with the
        queue's label and starts when Kueue admits it (all its pods at once); default
        ``[ml_provider] step_queue_name``; ``""`` sends the Job past Kueue whatever the configuration says.
    :param admission_timeout: seconds a Job may wait for Kueue's admission (or readmission after a
        preemption) before it is deleted and the task fails with the queue's reason; None (default)
        waits for ever. ``start_timeout`` counts from the admission.
    :param worker_restarts: failures per worker of a gang before it fails (default 3): in pods the
        Job's ``backoffLimitPerIndex`` (an eviction or preemption does not count, an application
        error fails the gang at once); locally, how often the gang of processes restarts after a
        worker was killed or lost its peer. A restarted gang resumes from its last checkpoint.
    :param durable: remember the task's Job in Airflow's task state store (Airflow 3.3+), so a try
        that follows a lost worker reads the result of a Job that already succeeded instead of
        running it again (a live Job is reattached by name either way). Default True.
    :param runner: deprecated: ``"in_process"`` is ``placement="worker"``, ``"python"`` is ``"interpreter"``.
    :param launcher: deprecated: ``"local"`` is ``placement="interpreter"``, ``"kubernetes"`` is ``"pod"``.
    :param worker_env: deprecated name of ``step_env``.
    """

    #: the placement when neither the DAG nor the configuration names one
    default_placement: ClassVar[str] = "worker"
    #: the step runs as a gang (``workers`` > 1 allowed; pods get a headless Service)
    runs_as_gang: ClassVar[bool] = False
    #: what a Job of this operator is called in messages
    gang_label: ClassVar[str] = "Step pod"

    task_id: str
    step: str
    log: Any
    # The placement arguments (set by _init_placement; see the class docstring).
    placement: str | None
    workers: int
    python: str | None
    step_env: dict[str, str] | None
    step_timeout: float | None
    kubernetes_conn_id: str | None
    image: str | None
    namespace: str | None
    container_resources: dict[str, Any] | None
    node_selector: dict[str, str] | None
    tolerations: list[dict[str, Any]] | None
    service_account: str | None
    pod_run_as_user: int
    pod_run_as_group: int
    labels: dict[str, str] | None
    image_pull_secrets: list[str] | None
    mlflow_secret: str | None
    port: int | None
    start_timeout: float
    poll_interval: float
    deferrable: bool
    # Defaults too, for an operator whose __init__ does not take these arguments (yet).
    gpus: int = 0
    gpu_resource: str | None = None
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    queue_name: str | None = None
    admission_timeout: float | None = None
    worker_restarts: int = 3
    durable: bool = True

    def _init_placement(self, settings: dict[str, Any]) -> None:
        """Set the placement arguments (``settings``: the operator's keyword arguments of that name)."""
        runner, launcher, worker_env = (settings.pop(k, None) for k in ("runner", "launcher", "worker_env"))
        self._given_as: tuple[str, str, dict[str, str]] | None = None
        for name, value in (("runner", runner), ("launcher", launcher)):
            if value is not None:
                from airflow_ml_provider.runners import placement as placements

                names = placements.RUNNER_NAMES if name == "runner" else placements.LAUNCHER_NAMES
                _deprecated(f"{name}={value!r}", f"placement={names.get(value, '...')!r}")
                self._given_as = (name, value, names)
                settings["placement"] = settings.get("placement") or names.get(value, value)
        if worker_env is not None:
            _deprecated("worker_env", "step_env")
            settings["step_env"] = {**worker_env, **(settings.get("step_env") or {})}
        if settings.get("deferrable") is None:
            settings["deferrable"] = conf.getboolean("operators", "default_deferrable", fallback=False)
        for name, value in settings.items():
            setattr(self, name, value)
        self._active: Any = None
        self._pod_job: tuple[str, str] | None = None

    # -- the effective placement --------------------------------------------------------------

    @property
    def placement_name(self) -> str:
        """
        The placement after the defaults: the argument, ``[ml_provider] default_placement``, then
        ``interpreter`` when ``[ml_provider] step_python`` names the step environment (one setting
        moves every step there), else the operator's own.
        """
        configured = self.placement or config_default("default_placement")
        if configured:
            return str(configured)
        return "interpreter" if config_default("step_python") else self.default_placement

    @property
    def launcher(self) -> str:
        """The earlier name of the placement of a gang: ``local`` or ``kubernetes``."""
        return "kubernetes" if self.placement_name == "pod" else "local"

    @property
    def runner(self) -> str:
        """The earlier name of the placement of a step: ``in_process`` or ``python``."""
        return "in_process" if self.placement_name == "worker" else "python"

    @property
    def worker_env(self) -> dict[str, str] | None:
        return self.step_env

    def _placement_argument(self) -> str:
        """How the DAG said where the step runs, for messages: ``placement='pod'``, ``launcher='kubernetes'``."""
        if self._given_as is not None:
            return f"{self._given_as[0]}={self._given_as[1]!r}"
        return f"placement={self.placement_name!r}"

    def resolved_python(self) -> str | None:
        return self.python or config_default("step_python")

    def resolved_image(self) -> str | None:
        return self.image or config_default("step_image")

    def resolved_conn_id(self) -> str:
        return str(self.kubernetes_conn_id or config_default("kubernetes_conn_id", "kubernetes_default"))

    def resolved_queue_name(self) -> str | None:
        """The Kueue LocalQueue: the argument, else ``[ml_provider] step_queue_name``; ``""`` is none."""
        return (self.queue_name if self.queue_name is not None else config_default("step_queue_name")) or None

    def resolved_priority_class_name(self) -> str | None:
        """The PriorityClass: the argument, else ``[ml_provider] step_priority_class_name``; ``""`` is none."""
        given = self.priority_class_name
        return (given if given is not None else config_default("step_priority_class_name")) or None

    def resolved_resources(self) -> dict[str, Any] | None:
        text = config_default("step_resources")
        if self.container_resources is not None or text is None:
            return self.container_resources
        try:
            value = json.loads(text)
        except ValueError as err:
            raise ValueError(
                f"[{SECTION}] step_resources is not JSON ({err}): fix the configuration."
            ) from None
        if not isinstance(value, dict):
            raise ValueError(f"[{SECTION}] step_resources must be a JSON object, got {text!r}.")
        return value

    # -- checks ----------------------------------------------------------------------------------

    def check_placement(self) -> None:
        """ValueError naming the first bad placement argument."""
        from airflow_ml_provider.runners.placement import check_placement

        where = f"Task {self.task_id!r}"
        if self._given_as is not None and self._given_as[1] not in self._given_as[2]:
            name, value, names = self._given_as
            raise ValueError(f"{where}: {name}={value!r} is not one of {', '.join(names)}.")
        check_placement(
            where,
            self.placement_name,
            self.workers,
            gang=self.runs_as_gang,
            image=self.resolved_image(),
            said=self._placement_argument(),
            image_hint=f", or [{SECTION}] step_image in the configuration",
        )
        self._check_pod_arguments(where)

    def _check_pod_arguments(self, where: str) -> None:
        """The pods' settings: with the configuration's defaults for ``placement='pod'``, else the DAG's own."""
        from airflow_ml_provider.runners.kubernetes_objects import DEFAULT_GPU_RESOURCE, check_pod_placement

        if self.placement_name == "pod":
            resources, queue, priority = (
                self.resolved_resources(), self.resolved_queue_name(), self.resolved_priority_class_name()
            )  # fmt: skip
        else:
            resources, queue, priority = self.container_resources, self.queue_name, self.priority_class_name
        check_pod_placement(
            where,
            resources=resources,
            node_selector=self.node_selector,
            tolerations=self.tolerations,
            gpus=self.gpus,
            gpu_resource=DEFAULT_GPU_RESOURCE if self.gpu_resource is None else self.gpu_resource,
            affinity=self.affinity,
            priority_class_name=priority or None,
            queue_name=queue or None,
            worker_restarts=self.worker_restarts,
        )
        timeout = self.admission_timeout
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise ValueError(
                f"{where}: admission_timeout must be a number of seconds > 0, or None to wait for "
                f"Kueue's admission for ever, got {timeout!r}."
            )
        if not isinstance(self.durable, bool):
            raise ValueError(f"{where}: durable must be True or False, got {self.durable!r}.")

    # -- what subclasses say ---------------------------------------------------------------------

    def step_extras(self, run: TaskRun) -> dict[str, str]:
        """Environment variables the step needs besides ``step_env`` (local placements)."""
        return {}

    def gang_environments(self) -> list[dict[str, str]]:
        """One environment per local worker of the gang (its length is ``workers``)."""
        return [{} for _ in range(self.workers)]

    def gang_result(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        """The step's result from the results of a local gang's workers (default: the chief's)."""
        return results[0]

    def resume_state(self) -> dict[str, Any]:
        """What the operator worked out before a deferral and needs after it (JSON-able)."""
        return {}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`resume_state` returned, after the deferral."""

    def pod_extras(self) -> tuple[dict[str, str], list[str]]:
        """Environment variables and Secret names (``envFrom``) the pods need besides MLflow's."""
        return {}, []

    def pod_result(self, run: TaskRun, spec: dict[str, Any]) -> dict[str, Any]:
        """The result of a step that ran in pods: the first pod logged it to the task's run."""
        from airflow_ml_provider.ml.__main__ import STEP_RESULT_ARTIFACT

        return download_json(run, STEP_RESULT_ARTIFACT)

    # -- local placements ------------------------------------------------------------------------

    def local_environment(self, run: TaskRun) -> dict[str, str]:
        """A child's environment: MLflow's credentials, the DAG folder on ``PYTHONPATH``, the extras."""
        from airflow_ml_provider.runners.placement import with_pythonpath

        env = {**run.hook.settings.child_environment(), **self.step_extras(run), **(self.step_env or {})}
        dag = getattr(self, "dag", None)
        return with_pythonpath(
            env, os.path.dirname(getattr(dag, "fileloc", "") or "") if dag is not None else ""
        )

    def run_locally(self, run: TaskRun, spec: dict[str, Any]) -> dict[str, Any]:
        """Run the step in this process, in another interpreter, or as a gang of local processes."""
        from airflow_ml_provider.runners import GangRunner
        from airflow_ml_provider.runners.placement import local_runner

        envs = self.gang_environments()
        runner = local_runner(
            self.placement_name,
            gang=self.runs_as_gang,
            worker_envs=envs,
            python=self.resolved_python(),
            timeout=self.step_timeout,
            env=self.local_environment(run) if self.placement_name != "worker" else {},
            in_process_env={**envs[0], **self.step_extras(run), **(self.step_env or {})},
            restarts=self.worker_restarts,
            **warm_settings(),
        )
        self._active = runner
        try:
            if isinstance(runner, GangRunner):
                return self.gang_result(runner.run_all(self.step, spec, logger=self.log))
            return runner.run(self.step, spec, logger=self.log)
        finally:
            self._active = None

    # -- pods ------------------------------------------------------------------------------------

    def pod_settings(self, mlflow: MlflowSettings) -> GangPodSettings:
        """What the step's pods look like, with the MLflow server of ``mlflow`` (no credentials)."""
        from airflow_ml_provider.ml.training.cluster import DEFAULT_PORT
        from airflow_ml_provider.runners.kubernetes_objects import DEFAULT_GPU_RESOURCE, GangPodSettings
        from airflow_ml_provider.runners.placement import mlflow_pod_env

        if not mlflow.is_http:
            raise ValueError(
                f"Task {self.task_id!r}: the pods cannot reach the MLflow store {mlflow.tracking_uri!r}; "
                f"give connection {getattr(self, 'mlflow_conn_id', 'mlflow_default')} an http(s) tracking server for {self._placement_argument()}."
            )
        env = mlflow_pod_env(mlflow.tracking_uri, mlflow.registry_uri, mlflow.insecure_tls)
        extra_env, extra_secrets = self.pod_extras()
        deadline = self.step_timeout
        return GangPodSettings(
            image=str(self.resolved_image()),
            namespace=str(self.namespace or config_default("step_namespace", "default")),
            workers=self.workers,
            port=self.port or DEFAULT_PORT,
            resources=self.resolved_resources(),
            node_selector=self.node_selector,
            tolerations=self.tolerations,
            service_account=self.service_account or config_default("step_service_account"),
            env={**env, **extra_env, **(self.step_env or {})},
            run_as_user=self.pod_run_as_user,
            run_as_group=self.pod_run_as_group,
            labels=dict(self.labels or {}),
            image_pull_secrets=list(self.image_pull_secrets or []),
            env_from_secrets=[*([self.mlflow_secret] if self.mlflow_secret else []), *extra_secrets],
            active_deadline_seconds=int(deadline) if deadline else None,
            gang=self.runs_as_gang,
            gpus=self.gpus,
            gpu_resource=DEFAULT_GPU_RESOURCE if self.gpu_resource is None else self.gpu_resource,
            affinity=self.affinity,
            priority_class_name=self.resolved_priority_class_name(),
            queue_name=self.resolved_queue_name(),
            worker_restarts=self.worker_restarts,
        )

    def job_hook(self) -> TrainingGangHook:
        from airflow_ml_provider.hooks.kubernetes import TrainingGangHook

        return TrainingGangHook(self.resolved_conn_id())

    def job_name(self, context: Context) -> str:
        from airflow_ml_provider.runners.kubernetes_objects import gang_name

        ti = context["ti"]
        return gang_name(ti.dag_id, ti.run_id, ti.task_id, ti.map_index if ti.map_index is not None else -1)

    def run_in_pods(self, context: Context, run: TaskRun, spec: dict[str, Any], cache_key: str | None) -> Any:
        """
        Start (or reattach to) the step's Job, then defer or wait; the result comes from MLflow.

        With ``durable``, a Job that an earlier try of the task started (its record in the task
        state store) and that has succeeded since is not run again: its result is read.
        """
        from airflow_ml_provider.runners.placement import GangRecord, step_job

        name = self.job_name(context)
        settings = self.pod_settings(run.hook.settings)
        outputs = getattr(self, "artifact_dir", None) if spec.get("output_dir") else None
        job, service = step_job(name, self.step, spec, settings, mlflow_run=run.run_id, outputs=outputs)
        hook = self.job_hook()
        self._pod_job = (name, settings.namespace)
        record = GangRecord(context.get("task_state_store") if self.durable else None, log=self.log)
        done = record.earlier_success(hook, job)
        if done is not None:
            return self.pods_finished(run, done, spec)
        hook.start_or_reattach(job, service, log=self.log)  # says which it did
        record.remember(hook, name, settings.namespace)
        started = time.time()
        if self.deferrable:
            from airflow_ml_provider.triggers.training_gang import TrainingGangTrigger

            self.defer(  # type: ignore[attr-defined]
                trigger=TrainingGangTrigger(
                    name=name,
                    namespace=settings.namespace,
                    workers=self.workers,
                    kubernetes_conn_id=self.resolved_conn_id(),
                    started_at=started,
                    start_timeout=self.start_timeout,
                    poll_interval=self.poll_interval,
                    admission_timeout=self.admission_timeout,
                ),
                method_name="execute_complete",
                kwargs={"spec": spec, "cache_key": cache_key, "state": self.resume_state()},
            )
        event = hook.wait(
            name,
            settings.namespace,
            self.workers,
            started_at=started,
            start_timeout=self.start_timeout,
            poll_interval=self.poll_interval,
            admission_timeout=self.admission_timeout,
            log=self.log,
        )
        return self.pods_finished(run, event, spec)

    def pods_finished(self, run: TaskRun, event: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        """The step's result once its Job succeeded; :class:`TrainingJobFailed` otherwise."""
        name, namespace = str(event.get("name")), str(event.get("namespace"))
        self._pod_job = (name, namespace)  # on_kill must find the Job after a deferral too
        what = f"{self.gang_label} {name} in namespace {namespace}"
        self.job_hook().conclude(
            event,
            what=what,
            gang=self.runs_as_gang,
            start_timeout=self.start_timeout,
            admission_timeout=self.admission_timeout,
            report=run.url,
            log=self.log,
        )
        return self.pod_result(run, spec)

    def kill_step(self) -> None:
        """Stop what runs the step: local processes, or the Job and its pods."""
        if self._active is not None and hasattr(self._active, "kill"):
            self._active.kill()
        if self._pod_job is not None:
            name, namespace = self._pod_job
            self.log.info("Task killed: deleting %s %s in %s", self.gang_label, name, namespace)
            self.job_hook().delete(name, namespace)


def download_json(run: TaskRun, artifact: str) -> dict[str, Any]:
    """A JSON artifact of the task's run (what a pod logged there; its own files are gone)."""
    return dict(run.hook.load_json_artifact(run.run_id, artifact))
