"""The step cache in operators: look up before running, record after, replay a hit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_ml_provider.cache import CacheHit
    from airflow_ml_provider.tracking import TaskRun


class StepCacheMixin:
    """
    Reuse the result of an earlier run with the same cache key (see :mod:`airflow_ml_provider.cache`).

    ``cache=None`` takes the operator's default (``cache_by_default``); set ``cache`` for a whole
    DAG through ``default_args={"cache": False}``.
    """

    cache_by_default: ClassVar[bool] = False
    # Spec keys that change between runs without changing the step's output.
    cache_volatile: ClassVar[tuple[str, ...]] = ("output_dir", "tracking_uri", "mlflow", "title", "context")
    # Spec keys holding URIs the step reads: fingerprinted, not compared as strings.
    cache_inputs: ClassVar[tuple[str, ...]] = ()
    # Of those, the ones whose path changes from run to run (local copies): keyed by content only.
    cache_content_inputs: ClassVar[tuple[str, ...]] = ()
    # Artifact folders of the source run that a hit needs (its results live there).
    cache_artifacts: ClassVar[tuple[str, ...]] = ()

    cache: bool | None
    task_id: str
    log: Any

    def cache_enabled(self) -> bool:
        return self.cache_by_default if self.cache is None else bool(self.cache)

    def cache_code(self, spec: dict[str, Any]) -> list[str]:
        """``module:function`` references of user code the step runs."""
        return []

    def cache_extra(self) -> dict[str, Any]:
        """What else, outside the spec, decides the output (e.g. the number of workers)."""
        return {}

    def step_cache_key(self, step: str, spec: dict[str, Any]) -> str | None:
        """The cache key of this task's step, or None when the cache is off."""
        if not self.cache_enabled():
            return None
        from airflow_ml_provider.cache import cache_key

        return cache_key(
            step,
            {**spec, "__extra__": self.cache_extra()},
            inputs={name: spec.get(name) for name in self.cache_inputs},
            code=self.cache_code(spec),
            volatile=self.cache_volatile,
            content_only=self.cache_content_inputs,
        )

    def cache_hit_usable(self, run: TaskRun, hit: CacheHit) -> bool:
        """Whether what the cached result points at still exists (beyond the run's artifacts)."""
        return True

    def find_cached(self, run: TaskRun, key: str | None) -> CacheHit | None:
        if key is None:
            return None
        from airflow_ml_provider.cache import find_hit

        hit = find_hit(run, key, self.cache_artifacts)
        if hit is not None and not self.cache_hit_usable(run, hit):
            self.log.info(
                "Cache: run %s had this key but what it produced is gone; running the step.", hit.run_id
            )
            return None
        if hit is None:
            self.log.info("Cache miss (key %s): running the step.", key[:16])
        return hit

    def replay_cached(self, context: Context, run: TaskRun, key: str, hit: CacheHit) -> Any:
        """Tag this task's run as a hit, say so in the log, and return the cached XCom value."""
        from airflow_ml_provider.cache import record_hit
        from airflow_ml_provider.vocabulary import XCOM_CACHE_SOURCE_URL

        record_hit(run, key, hit)
        if hit.url:  # the report links (extra links) open the source run, where the reports are
            context["ti"].xcom_push(key=XCOM_CACHE_SOURCE_URL, value=hit.url)
        self.log.info(
            "Cache hit: the same inputs were processed by MLflow run %s%s; reusing its result instead of "
            "running the step (key %s). Set cache=False on task %r to run it again.",
            hit.run_id,
            f" ({hit.url})" if hit.url else "",
            key[:16],
            self.task_id,
        )
        return self.after_cache_hit(context, run, hit.result)

    def after_cache_hit(self, context: Context, run: TaskRun, result: Any) -> Any:
        """What a hit returns: the operator's policy applied to the cached result."""
        return self.apply_policy(context, run, result)

    def apply_policy(self, context: Context, run: TaskRun, result: Any) -> Any:
        """
        Fail, skip or warn on a result (computed or cached) as the operator's policy says; return
        the XCom value. Runs after the result is recorded, so a gate that fails still leaves a
        result that a re-run on the same inputs reuses.
        """
        return result

    def record_cached(self, run: TaskRun, key: str | None, step: str, result: Any) -> None:
        if key is None:
            return
        from airflow_ml_provider.cache import record

        record(run, key, step, result)
