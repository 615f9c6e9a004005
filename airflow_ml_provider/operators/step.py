"""Run one step of the step layer as a tracked Airflow task: the one lifecycle every step operator shares."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_ml_provider.ml.registry import step_reference
from airflow_ml_provider.operators._cache import StepCacheMixin
from airflow_ml_provider.operators._placement import (
    PLACEMENT_ARGUMENTS,
    POD_PLACEMENT_TEMPLATE_FIELDS,
    StepPlacement,
)
from airflow_ml_provider.operators.base import MLflowTrackedOperator
from airflow_ml_provider.vocabulary import ARTIFACT_STEP_SPEC, TAG_PLACEMENT, TAG_STEP

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_ml_provider.tracking import TaskRun

ON_PROBLEM = ("fail", "skip", "warn")
# Where a step in a pod writes its outputs (the pod's own disk); they go to MLflow from there.
POD_SCRATCH = "/tmp/airflow-ml-step"


class MLStepOperator(StepPlacement, StepCacheMixin, MLflowTrackedOperator):
    """
    Run a step (a function from a JSON-able spec to a JSON-able result) and record it in MLflow.

    Every step operator has this lifecycle: check the arguments, build the spec and check it
    against the step's declared type, log it, look it up in the step cache, run the step where
    ``placement`` says (see the "Placements" page: this worker's process, another interpreter, a
    Kubernetes pod, or, for training and tuning, a gang of processes or pods), collect the result,
    record it, turn it into the XCom value and pass it through the operator's gate (fail, skip or
    warn). Subclasses declare the step, build the spec and handle the result.

    The step's log lines stream into the task log. The spec is logged as a JSON artifact; what
    the result puts under ``"mlflow"`` (``metrics``, ``params``, ``tags``) is logged to the task's
    run; files the step writes under the spec's ``output_dir`` go to the run's ``artifact_dir``.

    :param step: a built-in step name or ``package.module:function`` (templated).
    :param spec: the step's input (templated, rendered as JSON).
    :param cache: reuse the result of an earlier run of the same step on the same inputs, spec and
        code (see the "Step cache" page); None takes the operator's default (off here, on for
        validation and evaluation). ``default_args={"cache": False}`` turns it off for a DAG.

    The placement arguments (``placement``, ``workers``, ``python``, ``step_env``, ``step_timeout``,
    ``image``, ``namespace``, ``gpus``, ``queue_name``, ``worker_restarts``, ``durable`` and the other
    pod settings) are described on
    :class:`~airflow_ml_provider.operators._placement.StepPlacement`.
    """

    template_fields: Sequence[str] = (
        "step",
        "spec",
        *POD_PLACEMENT_TEMPLATE_FIELDS,
        *MLflowTrackedOperator.template_fields,
    )
    template_fields_renderers = {"spec": "json"}
    #: where the step's spec is logged in the task's run
    spec_artifact: ClassVar[str] = ARTIFACT_STEP_SPEC
    #: the run's artifact folder for the files the step writes under the spec's ``output_dir``
    artifact_dir: ClassVar[str | None] = None

    def __init__(
        self,
        *,
        step: str,
        spec: dict[str, Any] | None = None,
        placement: str | None = None,
        workers: int = 1,
        python: str | None = None,
        step_env: dict[str, str] | None = None,
        step_timeout: float | None = None,
        cache: bool | None = None,
        runner: str | None = None,
        launcher: str | None = None,
        worker_env: dict[str, str] | None = None,
        kubernetes_conn_id: str | None = None,
        image: str | None = None,
        namespace: str | None = None,
        container_resources: dict[str, Any] | None = None,
        node_selector: dict[str, str] | None = None,
        tolerations: list[dict[str, Any]] | None = None,
        service_account: str | None = None,
        pod_run_as_user: int = 1000,
        pod_run_as_group: int = 1000,
        labels: dict[str, str] | None = None,
        image_pull_secrets: list[str] | None = None,
        mlflow_secret: str | None = None,
        port: int | None = None,
        start_timeout: float = 600.0,
        poll_interval: float = 10.0,
        deferrable: bool | None = None,
        gpus: int = 0,
        gpu_resource: str | None = None,
        affinity: dict[str, Any] | None = None,
        priority_class_name: str | None = None,
        queue_name: str | None = None,
        admission_timeout: float | None = None,
        worker_restarts: int = 3,
        durable: bool = True,
        **kwargs: Any,
    ) -> None:
        placement_settings = {k: v for k, v in locals().items() if k in PLACEMENT_ARGUMENTS}
        super().__init__(**kwargs)
        self.cache = cache
        self.step = step
        self.spec = spec
        self._init_placement(placement_settings)
        self._scratch: str | None = None

    # -- what subclasses declare -----------------------------------------------------------------

    def _check_arguments(self) -> None:
        """ValueError or TypeError naming the first bad argument; subclasses add their own."""
        self.check_placement()
        step_reference(self.step)

    def build_spec(self, context: Context, run: TaskRun) -> dict[str, Any]:
        """The step's spec; subclasses build it from their own (templated) arguments."""
        spec = self.spec or {}
        if not isinstance(spec, dict):
            raise TypeError(
                f"Task {self.task_id!r}: spec must be a dict (rendered from the template), got "
                f"{type(spec).__name__}."
            )
        return spec

    def start_params(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The MLflow params logged when the step starts."""
        return {"step": self.step, "runner": self.runner, "placement": self.placement_name}

    def start_tags(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The MLflow tags set when the step starts."""
        return {TAG_STEP: self.step, TAG_PLACEMENT: self.placement_name}

    def handle_result(
        self, context: Context, run: TaskRun, spec: dict[str, Any], result: dict[str, Any]
    ) -> Any:
        """Log the result to the task's run; the return value goes to XCom."""
        tracked = result.get("mlflow") or {}
        run.log_metrics(tracked.get("metrics") or {})
        run.log_params(tracked.get("params") or {})
        run.set_tags(tracked.get("tags") or {})
        run.flush()
        return result

    def cache_code(self, spec: dict[str, Any]) -> list[str]:
        return [self.step] if ":" in self.step else []

    # -- the scratch directory (the template's) --------------------------------------------------

    def output_dir(self) -> str:
        """Where the step writes the files that go to ``artifact_dir``: this task's scratch directory."""
        if self.placement_name == "pod":
            return f"{POD_SCRATCH}/out"
        return self.scratch_path("out")

    def scratch_path(self, name: str) -> str:
        """A path in this task's scratch directory on the worker (removed when the task ends)."""
        if self._scratch is None:
            from airflow_ml_provider.ml.scratch import make_scratch_dir

            self._scratch = make_scratch_dir(f"ml-{self.step.replace(':', '-').replace('.', '-')}")
        return os.path.join(self._scratch, name)

    @contextlib.contextmanager
    def _scratch_dir(self) -> Iterator[None]:
        try:
            yield
        finally:
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None

    # -- the lifecycle ---------------------------------------------------------------------------

    def execute_tracked(self, context: Context, run: TaskRun) -> Any:
        self._check_arguments()
        with self._scratch_dir():
            spec = self.build_spec(context, run)
            self._check_spec(spec)
            self.log_start(run, spec)
            key = self.step_cache_key(self.step, spec)
            hit = self.find_cached(run, key)
            if key is not None and hit is not None:
                return self.replay_cached(context, run, key, hit)
            result = self.run_step(context, run, spec, key)
            return self.finish(context, run, spec, key, result)

    def run_step(self, context: Context, run: TaskRun, spec: dict[str, Any], cache_key: str | None) -> Any:
        """Run the step where ``placement`` says; its result (pods: after a deferral, or a wait)."""
        if self.placement_name == "pod":
            return self.run_in_pods(context, run, spec, cache_key)
        return self.run_locally(run, spec)

    def complete_tracked(self, context: Context, run: TaskRun, event: dict[str, Any], **kwargs: Any) -> Any:
        """Resume after the step's pods ran: collect the result and finish as :meth:`execute_tracked` does."""
        spec, cache_key = kwargs.get("spec"), kwargs.get("cache_key")
        self.restore_state(kwargs.get("state") or {})
        with self._scratch_dir():
            if spec is None:  # deferred by an earlier release, which passed no spec
                spec = self.build_spec(context, run)
                cache_key = self.step_cache_key(self.step, spec)
            result = self.pods_finished(run, event, spec)
            return self.finish(context, run, spec, cache_key, result)

    def _check_spec(self, spec: dict[str, Any]) -> None:
        """The spec against the step's declared type, before anything starts."""
        try:
            from airflow_ml_provider.ml.specs import check_spec
        except ImportError:  # pragma: no cover - the types arrive with the step layer
            return
        try:
            check_spec(self.step, spec)
        except ValueError as err:
            raise ValueError(f"Task {self.task_id!r}: {err}") from None

    def log_start(self, run: TaskRun, spec: dict[str, Any]) -> None:
        run.log_params(self.start_params(spec))
        run.set_tags(self.start_tags(spec))
        run.flush()
        run.hook.client.log_text(run.run_id, json.dumps(spec, indent=2, sort_keys=True), self.spec_artifact)

    def finish(
        self, context: Context, run: TaskRun, spec: dict[str, Any], key: str | None, result: dict[str, Any]
    ) -> Any:
        """Record the step's outputs and result, cache it, and pass it through the gate."""
        output_dir = spec.get("output_dir")
        if self.artifact_dir and output_dir and self.placement_name != "pod" and os.path.isdir(output_dir):
            run.log_artifacts(output_dir, self.artifact_dir)  # a pod logged them itself
        value = self.handle_result(context, run, spec, result)
        self.record_cached(run, key, self.step, value)
        return self.apply_policy(context, run, value)

    def gate(self, policy: str, error: Exception, *, argument: str) -> None:
        """
        The one fail / skip / warn gate: raise ``error``, skip this task (and so the tasks
        downstream), or log it and go on, as ``policy`` (the operator's ``argument``) says.
        """
        if policy == "fail":
            raise error
        if policy == "skip":
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException(f"{error} -- skipping the downstream tasks.")
        self.log.warning("%s -- going on (%s='warn').", error, argument)

    def check_policy(self, argument: str) -> None:
        """ValueError when the operator's gate argument is not fail, skip or warn."""
        value = getattr(self, argument)
        if value not in ON_PROBLEM:
            raise ValueError(
                f"Task {self.task_id!r}: {argument}={value!r} is not one of {', '.join(ON_PROBLEM)}."
            )

    def on_kill(self) -> None:
        self.kill_step()


__all__ = ["ON_PROBLEM", "MLStepOperator"]
