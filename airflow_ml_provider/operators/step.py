"""Run one step of the step layer as a tracked Airflow task."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.ml.registry import step_reference
from airflow_ml_provider.operators._cache import StepCacheMixin
from airflow_ml_provider.operators.base import MLflowTrackedOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_ml_provider.runners import StepRunner
    from airflow_ml_provider.tracking import TaskRun

RUNNERS = ("in_process", "python")


class MLStepOperator(StepCacheMixin, MLflowTrackedOperator):
    """
    Run a step (a function from a JSON-able spec to a JSON-able result) and record it in MLflow.

    The step runs in this worker process (``runner="in_process"``) or in another Python
    interpreter given by ``python`` (``runner="python"``), for example an environment that holds
    the TensorFlow stack. Its log lines stream into the task log. The spec is logged as a JSON
    artifact; what the result puts under ``"mlflow"`` (``metrics``, ``params``, ``tags``) is logged
    to the task's run; the result goes to XCom.

    :param step: a built-in step name or ``package.module:function`` (templated).
    :param spec: the step's input (templated, rendered as JSON).
    :param runner: ``"in_process"`` or ``"python"``.
    :param python: path of the interpreter for ``runner="python"`` (templated); defaults to the
        worker's own.
    :param step_timeout: seconds after which the step (and its children) is killed.
    :param step_env: extra environment variables for the child interpreter.
    :param cache: reuse the result of an earlier run of the same step on the same inputs, spec and
        code (see the "Step cache" page); None takes the operator's default (off here, on for
        validation and evaluation). ``default_args={"cache": False}`` turns it off for a DAG.
    """

    template_fields: Sequence[str] = (
        "step",
        "spec",
        "python",
        *MLflowTrackedOperator.template_fields,
    )
    template_fields_renderers = {"spec": "json"}

    def __init__(
        self,
        *,
        step: str,
        spec: dict[str, Any] | None = None,
        runner: str = "in_process",
        python: str | None = None,
        step_timeout: float | None = None,
        step_env: dict[str, str] | None = None,
        cache: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cache = cache
        self.step = step
        self.spec = spec
        self.runner = runner
        self.python = python
        self.step_timeout = step_timeout
        self.step_env = step_env
        self._active_runner: StepRunner | None = None

    def _check_arguments(self) -> None:
        if self.runner not in RUNNERS:
            raise ValueError(
                f"Task {self.task_id!r}: runner={self.runner!r} is not one of {', '.join(RUNNERS)}."
            )
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

    def execute_tracked(self, context: Context, run: TaskRun) -> Any:
        self._check_arguments()
        spec = self.build_spec(context, run)
        run.log_params({"step": self.step, "runner": self.runner})
        run.set_tags({"airflow_ml.step": self.step})
        run.flush()
        run.hook.client.log_text(run.run_id, json.dumps(spec, indent=2, sort_keys=True), "step/spec.json")
        key = self.step_cache_key(self.step, spec)
        hit = self.find_cached(run, key)
        if key is not None and hit is not None:
            return self.replay_cached(context, run, key, hit)
        result = self.run_step(spec, run)
        value = self.handle_result(context, run, spec, result)
        self.record_cached(run, key, self.step, value)
        return self.apply_policy(context, run, value)

    def cache_code(self, spec: dict[str, Any]) -> list[str]:
        return [self.step] if ":" in self.step else []

    def run_step(self, spec: dict[str, Any], run: TaskRun) -> dict[str, Any]:
        """Run the step with the configured runner, its log streaming into the task log."""
        from airflow_ml_provider.runners import get_runner

        runner_kwargs: dict[str, Any] = {}
        if self.runner == "python":
            env = {**run.hook.settings.child_environment(), **(self.step_env or {})}
            runner_kwargs = {"python": self.python, "timeout": self.step_timeout, "env": env}
        runner = get_runner(self.runner, **runner_kwargs)
        self._active_runner = runner
        try:
            return runner.run(self.step, spec, logger=self.log)
        finally:
            self._active_runner = None

    def on_kill(self) -> None:
        runner = self._active_runner
        if runner is not None and hasattr(runner, "kill"):
            runner.kill()
