"""Run one step as a gang of N worker processes: all succeed, or the first failure stops them all."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from airflow_ml_provider.exceptions import StepFailed
from airflow_ml_provider.runners._logger import StepLogger
from airflow_ml_provider.runners.python import PythonRunner

log = logging.getLogger(__name__)


class _Prefixed:
    """A logger that puts ``[worker i]`` in front of every line of one worker's output."""

    def __init__(self, logger: StepLogger, prefix: str) -> None:
        self.logger = logger
        self.prefix = prefix

    def _format(self, msg: Any) -> str:
        return self.prefix.replace("%", "%%") + " " + str(msg)

    def debug(self, msg: Any, /, *args: Any, **kwargs: Any) -> Any:
        emit = getattr(self.logger, "debug", None)
        return emit(self._format(msg), *args, **kwargs) if emit is not None else None

    def info(self, msg: Any, /, *args: Any, **kwargs: Any) -> Any:
        return self.logger.info(self._format(msg), *args, **kwargs)

    def warning(self, msg: Any, /, *args: Any, **kwargs: Any) -> Any:
        return self.logger.warning(self._format(msg), *args, **kwargs)


class GangRunner:
    """
    Run a step in N processes of another (or this) interpreter, each with its own environment.

    Used for multi-worker training: every process gets the same spec and its own ``TF_CONFIG``.
    Each worker's output streams into the log with a ``[worker i]`` prefix. When one worker fails,
    the others are killed with their process groups at once and the failure names that worker and
    ends with its last lines; nothing is left running.

    :param worker_envs: one environment (added to ``env``) per worker; its length is the gang size.
    :param python: the interpreter (default: this one).
    :param timeout: seconds after which the whole gang is killed.
    :param env: environment for every worker.
    :param cwd: working directory of the workers.
    :param warm: start the workers as children of the interpreter's warm step server.
    :param warm_idle_seconds: a warm server started now exits after this long without a step.
    """

    def __init__(
        self,
        worker_envs: Sequence[dict[str, str]],
        *,
        python: str | None = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        warm: bool = False,
        warm_idle_seconds: float = 600.0,
    ) -> None:
        if not worker_envs:
            raise ValueError("GangRunner: worker_envs is empty; a gang needs at least one worker.")
        self.runners = [
            PythonRunner(
                python=python,
                timeout=timeout,
                env={**(env or {}), **worker_env},
                cwd=cwd,
                warm=warm,
                warm_idle_seconds=warm_idle_seconds,
            )  # fmt: skip
            for worker_env in worker_envs
        ]
        self._lock = threading.Lock()

    def kill(self) -> None:
        """Kill every worker with its process group (for ``on_kill``)."""
        for runner in self.runners:
            runner.kill()

    def run(self, step: str, spec: dict[str, Any], *, logger: StepLogger | None = None) -> dict[str, Any]:
        """
        Run the gang; return the chief's (worker 0's) result, as every :class:`StepRunner` does.

        :raises StepFailed: the first worker that failed (the others were killed), naming it.
        """
        return self.run_all(step, spec, logger=logger)[0]

    def run_all(
        self, step: str, spec: dict[str, Any], *, logger: StepLogger | None = None
    ) -> list[dict[str, Any]]:
        """
        Run the gang; return the results in worker order.

        :raises StepFailed: the first worker that failed (the others were killed), naming it.
        """
        logger = logger or log
        self.runners[0].check(step, spec)  # once, in the workers' interpreter, before any starts
        size = len(self.runners)
        results: list[dict[str, Any] | None] = [None] * size
        failures: list[tuple[int, BaseException]] = []
        done = threading.Event()
        remaining = [size]

        def work(index: int) -> None:
            try:
                results[index] = self.runners[index].run(
                    step, spec, logger=_Prefixed(logger, f"[worker {index}]"), check=False
                )
            except BaseException as err:  # a worker thread must report, never die silently
                with self._lock:
                    failures.append((index, err))
                done.set()
            finally:
                with self._lock:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        done.set()

        threads = [
            threading.Thread(target=work, args=(i,), name=f"gang-{step}-{i}", daemon=True)
            for i in range(size)
        ]
        logger.info("Starting step %s as a gang of %d workers", step, size)
        for thread in threads:
            thread.start()
        try:
            done.wait()
        finally:
            if failures or remaining[0]:
                self.kill()  # the first failure (or an interruption) stops the whole gang
            for thread in threads:
                thread.join()
        if failures:
            index, err = failures[0]
            lines = getattr(err, "last_lines", [])
            message = f"Worker {index} of {size} failed, so the gang was stopped: {err}"
            raise StepFailed(
                step, message, last_lines=lines, returncode=getattr(err, "returncode", None), original=err
            ) from None  # the worker's error is in the message: no second, chained traceback
        return [r if r is not None else {} for r in results]
