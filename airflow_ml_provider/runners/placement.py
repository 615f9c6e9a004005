"""
Placements: one vocabulary for where any step runs, and what each needs (no Airflow here).

``placement`` is ``"worker"`` (this process), ``"interpreter"`` (``python -m airflow_ml_provider.ml``
in another interpreter on this machine) or ``"pod"`` (Kubernetes); ``workers`` > 1 makes a gang of
processes or pods, for the steps that run as one (training, tuning). Operators resolve their
arguments and configuration into these calls; see the "Placements" page.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # imported where used: this module is loaded when a DAG file is parsed
    from airflow_ml_provider.runners import StepRunner
    from airflow_ml_provider.runners.kubernetes_objects import GangPodSettings

PLACEMENTS = ("worker", "interpreter", "pod")
# The names of earlier releases: runner= (a step), launcher= (a gang).
RUNNER_NAMES = {"in_process": "worker", "python": "interpreter"}
LAUNCHER_NAMES = {"local": "interpreter", "kubernetes": "pod"}


def check_placement(
    where: str,
    placement: str,
    workers: Any,
    *,
    gang: bool,
    image: str | None,
    said: str,
    image_hint: str = "",
) -> None:
    """
    ValueError naming the first bad placement argument.

    :param where: who is asking, e.g. ``"Task 'train'"``.
    :param gang: the step may run as a gang (``workers`` > 1).
    :param image: the pods' image, for ``placement="pod"``.
    :param said: how the DAG named the placement, for messages (``placement='pod'``, ``launcher='kubernetes'``).
    :param image_hint: where else an image may come from, added to the message.
    """
    from airflow_ml_provider.ml.training.cluster import MAX_WORKERS

    if placement not in PLACEMENTS:
        raise ValueError(f"{where}: placement={placement!r} is not one of {', '.join(PLACEMENTS)}.")
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"{where}: workers must be an int in 1..{MAX_WORKERS}, got {workers!r}.")
    if workers > 1 and not gang:
        raise ValueError(f"{where}: workers={workers}: this step runs in one process; leave workers=1.")
    if workers > 1 and placement == "worker":
        raise ValueError(
            f"{where}: workers={workers} needs placement='interpreter' (local processes) or 'pod'; "
            "placement='worker' runs the step in the worker's own process."
        )
    if placement == "pod" and not image:
        raise ValueError(
            f"{where}: {said} needs image= (this provider and the step's dependencies){image_hint}."
        )


def local_runner(
    placement: str,
    *,
    gang: bool,
    worker_envs: Sequence[dict[str, str]],
    python: str | None,
    timeout: float | None,
    env: dict[str, str],
    in_process_env: dict[str, str],
    warm: bool = False,
    warm_idle_seconds: float = 600.0,
    restarts: int = 0,
) -> StepRunner:
    """
    The runner of a local placement: this process, another interpreter, or a gang of processes.

    :param worker_envs: one environment per worker of a gang (its length is the gang size).
    :param env: the environment of a child process (credentials, ``PYTHONPATH`` ...).
    :param in_process_env: the variables the step reads from ``os.environ`` when it runs in this
        process (set while it runs); never credentials.
    :param warm: start the processes as children of the interpreter's warm step server.
    :param warm_idle_seconds: a warm server started now exits after this long without a step.
    :param restarts: how many times a gang may restart after a transient failure (a worker killed,
        or one that lost its peer); a single process is never restarted.
    """
    from airflow_ml_provider.runners import GangRunner, InProcessRunner, PythonRunner

    if placement == "worker":
        return InProcessRunner(env=in_process_env) if in_process_env else InProcessRunner()
    if gang:
        return GangRunner(
            worker_envs,
            python=python,
            timeout=timeout,
            env=env,
            warm=warm,
            warm_idle_seconds=warm_idle_seconds,
            restarts=restarts,
        )
    return PythonRunner(
        python=python, timeout=timeout, env=env, warm=warm, warm_idle_seconds=warm_idle_seconds
    )


def with_pythonpath(env: dict[str, str], folder: str) -> dict[str, str]:
    """``env`` with ``folder`` (e.g. the DAG file's, where a user's module may sit) on ``PYTHONPATH``."""
    given = env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    paths = [p for p in (given, folder) if p]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)} if paths else dict(env)


def mlflow_pod_env(tracking_uri: str, registry_uri: str, insecure_tls: bool) -> dict[str, str]:
    """Where the pods log (no credentials: those come from a Secret)."""
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": registry_uri}
    if insecure_tls:
        env["MLFLOW_TRACKING_INSECURE_TLS"] = "true"
    return env


def step_job(
    name: str,
    step: str,
    spec: dict[str, Any],
    settings: GangPodSettings,
    *,
    mlflow_run: str,
    outputs: str | None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """
    The Job that runs ``step`` in pods (and, for a gang, its headless Service). The first pod
    records the result in ``mlflow_run`` and, with ``outputs``, the spec's ``output_dir`` under that
    artifact path: a pod shares no file with the task.
    """
    from airflow_ml_provider.runners.kubernetes_objects import headless_service, indexed_job

    args = ["--mlflow-run", mlflow_run, *(["--outputs-artifact-path", outputs] if outputs else [])]
    job = indexed_job(name, step, spec, settings, extra_args=args)
    return job, headless_service(name, settings) if settings.gang else None


class JobLookup(Protocol):
    """What :class:`GangRecord` asks of the Kubernetes hook (``TrainingGangHook``; runners sit below hooks)."""

    def job_ref(self, name: str, namespace: str) -> dict[str, Any] | None: ...

    def earlier_outcome(self, ref: dict[str, Any]) -> str: ...

    def pod_template_annotation(self, name: str, namespace: str, key: str) -> str | None: ...


class GangRecord:
    """
    The task state store's record of the Job a try of the task started (Airflow 3.3+), with the
    semantics of Airflow's ``ResumableJobMixin``: a later try of the task that finds the Job
    succeeded reads its result instead of running it again (a worker lost after the Job finished).

    The record only ever helps: without a store (Airflow before 3.3, or ``durable=False``) or when
    the store fails, the task goes on as before (a live Job is reattached by name; a finished one
    is replaced), after one WARNING.

    :param store: the context's ``task_state_store``, or None.
    :param log: the operator's logger.
    """

    #: the store's key; renaming it strands the records of running tasks
    key = "training_gang"

    def __init__(self, store: Any, *, log: Any) -> None:
        self.store, self.log = store, log
        if store is None:
            log.debug(
                "No task state store (Airflow before 3.3, or durable=False): a retry of this task "
                "finds its Job by name only."
            )

    def _lost(self, what: str, err: Exception) -> None:
        self.log.warning(
            "Task state store: could not %s (%s: %s); going on without it.", what, type(err).__name__, err
        )
        self.store = None

    def earlier_success(self, hook: JobLookup, job: dict[str, Any]) -> dict[str, Any] | None:
        """
        The success event of the Job an earlier try recorded, when it is ``job``'s (same name,
        namespace and spec) and has succeeded; None otherwise.
        """
        if self.store is None:
            return None
        from airflow_ml_provider.runners.kubernetes_objects import SPEC_ANNOTATION

        name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
        try:
            ref = self.store.get(self.key)
            if not isinstance(ref, dict) or (ref.get("name"), ref.get("namespace")) != (name, namespace):
                return None
            if hook.earlier_outcome(ref) != "succeeded":
                return None
            spec = job["spec"]["template"]["metadata"]["annotations"][SPEC_ANNOTATION]
            if hook.pod_template_annotation(name, namespace, SPEC_ANNOTATION) != spec:
                self.log.info(
                    "The Job %s of an earlier try succeeded with another spec: running this one.", name
                )
                return None
        except Exception as err:
            self._lost("read the earlier try's Job", err)
            return None
        self.log.info(
            "Job %s in %s (uid %s), started by an earlier try of this task, has already succeeded "
            "(the worker was lost after it finished): reading its result instead of running it again.",
            name,
            namespace,
            ref.get("uid"),
        )
        message = "succeeded in an earlier try of the task"
        return {"status": "success", "name": name, "namespace": namespace, "message": message}

    def remember(self, hook: JobLookup, name: str, namespace: str) -> None:
        """Record the task's Job (name, namespace, uid) for a later try."""
        if self.store is None:
            return
        try:
            ref = hook.job_ref(name, namespace)
            if ref is not None:
                self.store.set(self.key, ref)
        except Exception as err:
            self._lost("record the Job", err)


__all__ = [
    "LAUNCHER_NAMES",
    "PLACEMENTS",
    "RUNNER_NAMES",
    "GangRecord",
    "JobLookup",
    "check_placement",
    "local_runner",
    "mlflow_pod_env",
    "step_job",
    "with_pythonpath",
]
