"""
Run one step as a gang of N worker processes: all succeed, or the first failure stops them all; a
transient failure (a worker killed, one that lost its peer) may restart the whole gang.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from airflow_ml_provider.exceptions import StepFailed, StepTimeout
from airflow_ml_provider.ml.exit_codes import is_retriable
from airflow_ml_provider.runners._logger import StepLogger
from airflow_ml_provider.runners.python import PythonRunner
from airflow_ml_provider.runners.python import _describe_exit as describe_exit

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


WorkerEnvs = Sequence[dict[str, str]]
# Seconds between SIGTERM and SIGKILL for the workers left when one failed.
SURVIVOR_GRACE_SECONDS = 1.0


class GangRunner:
    """
    Run a step in N processes of another (or this) interpreter, each with its own environment.

    Used for multi-worker training: every process gets the same spec and its own ``TF_CONFIG``.
    Each worker's output streams into the log with a ``[worker i]`` prefix. When one worker fails,
    the others are killed with their process groups at once and the failure names that worker and
    ends with its last lines; nothing is left running.

    With ``restarts``, a worker that fails transiently (killed by a signal, or exit code 75 when it
    lost a peer: :func:`~airflow_ml_provider.ml.exit_codes.is_retriable`) restarts the whole gang,
    at most that many times: the others are killed, and every worker starts again with fresh
    ``TF_CONFIG`` ports (a training step resumes from its last checkpoint). An application error
    (exit code 1 or 2), a timeout or :meth:`kill` stops the gang at once.

    :param worker_envs: one environment (added to ``env``) per worker; its length is the gang size.
        Or a callable that returns them, called again for every restart. A list whose
        ``TF_CONFIG`` places every worker on localhost gets fresh free ports on a restart.
    :param python: the interpreter (default: this one).
    :param timeout: seconds after which the whole gang is killed (each run of the gang).
    :param env: environment for every worker.
    :param cwd: working directory of the workers.
    :param warm: start the workers as children of the interpreter's warm step server.
    :param warm_idle_seconds: a warm server started now exits after this long without a step.
    :param restarts: how many times the gang may restart after a transient failure (default 0).
    """

    def __init__(
        self,
        worker_envs: WorkerEnvs | Callable[[], WorkerEnvs],
        *,
        python: str | None = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        warm: bool = False,
        warm_idle_seconds: float = 600.0,
        restarts: int = 0,
    ) -> None:
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0:
            raise ValueError(f"GangRunner: restarts must be an int >= 0, got {restarts!r}.")
        self._next_envs: Callable[[], WorkerEnvs] = (
            worker_envs if callable(worker_envs) else _fresh_ports(list(worker_envs))
        )
        self._options: dict[str, Any] = {
            "python": python,
            "timeout": timeout,
            "cwd": cwd,
            "warm": warm,
            "warm_idle_seconds": warm_idle_seconds,
        }
        self.env = dict(env or {})
        self.restarts = restarts
        self._lock = threading.Lock()
        self._stopped = False
        self.runners = self._runners(worker_envs if not callable(worker_envs) else self._next_envs())

    def _runners(self, worker_envs: WorkerEnvs) -> list[PythonRunner]:
        if not worker_envs:
            raise ValueError("GangRunner: worker_envs is empty; a gang needs at least one worker.")
        return [PythonRunner(env={**self.env, **worker_env}, **self._options) for worker_env in worker_envs]

    def kill(self) -> None:
        """Kill every worker with its process group (for ``on_kill``); the gang does not restart."""
        self._stopped = True
        self._kill_workers()

    def _kill_workers(self, grace_seconds: float | None = None) -> None:
        for runner in self.runners:
            if grace_seconds is not None:
                runner.kill_grace_seconds = min(runner.kill_grace_seconds, grace_seconds)
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
        Run the gang (again after a transient failure, up to ``restarts`` times); return the
        results in worker order.

        :raises StepFailed: the first worker that failed (the others were killed), naming it.
        """
        logger = logger or log
        self._stopped = False
        self.runners[0].check(step, spec)  # once, in the workers' interpreter, before any starts
        restart = 0
        while True:
            failure = self._run_once(step, spec, logger)
            if not isinstance(failure, tuple):
                return failure
            index, err = failure
            size = len(self.runners)
            if self._stopped or restart >= self.restarts or not _is_transient(err):
                after = f" (after {restart} restart{'s' if restart != 1 else ''})" if restart else ""
                message = f"Worker {index} of {size} failed, so the gang was stopped{after}: {err}"
                raise StepFailed(
                    step,
                    message,
                    last_lines=getattr(err, "last_lines", []),
                    returncode=getattr(err, "returncode", None),
                    original=err,
                ) from None  # the worker's error is in the message: no second, chained traceback
            restart += 1
            code = getattr(err, "returncode", None)
            logger.warning(
                "Worker %d of %d failed (%s): the gang restarts from its last checkpoint (restart %d of %d)",
                index,
                size,
                describe_exit(code) if code is not None else type(err).__name__,
                restart,
                self.restarts,
            )
            self.runners = self._runners(self._next_envs())

    def _run_once(
        self, step: str, spec: dict[str, Any], logger: StepLogger
    ) -> list[dict[str, Any]] | tuple[int, BaseException]:
        """Run every worker once: their results, or the first failure ``(index, error)``."""
        runners = self.runners
        size = len(runners)
        results: list[dict[str, Any] | None] = [None] * size
        failures: list[tuple[int, BaseException]] = []
        done = threading.Event()
        remaining = [size]

        def work(index: int) -> None:
            try:
                if self._stopped:  # killed while the gang restarted
                    raise StepFailed(step, f"Step {step!r} was stopped before worker {index} started.")
                results[index] = runners[index].run(
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
        except BaseException:
            self._stopped = True  # interrupted: no restart
            raise
        finally:
            if failures or remaining[0]:
                # The first failure (or an interruption) stops the whole gang. After a failure the
                # others are stuck in collective ops (TensorFlow takes SIGTERM as a preemption
                # notice and goes on): a short grace before SIGKILL.
                self._kill_workers(SURVIVOR_GRACE_SECONDS if failures else None)
            for thread in threads:
                thread.join()
        if failures:
            return failures[0]
        return [r if r is not None else {} for r in results]


def _is_transient(err: BaseException) -> bool:
    """A worker's failure that a restarted gang may get past (not a timeout, not an error of the code)."""
    return not isinstance(err, StepTimeout) and is_retriable(getattr(err, "returncode", None))


def _fresh_ports(worker_envs: list[dict[str, str]]) -> Callable[[], WorkerEnvs]:
    """
    The environments of a restarted gang: ``worker_envs`` again, with new free ports in a
    ``TF_CONFIG`` that places every worker on localhost (the old ports may still be held).
    """
    from airflow_ml_provider.ml.training.cluster import TF_CONFIG, local_cluster, tf_config

    def local_hosts() -> list[str] | None:
        try:
            clusters = [json.loads(env[TF_CONFIG])["cluster"]["worker"] for env in worker_envs]
        except (KeyError, TypeError, ValueError):
            return None
        hosts = [str(address).rpartition(":")[0] for address in clusters[0]]
        same = all(c == clusters[0] for c in clusters) and len(clusters[0]) == len(worker_envs)
        return hosts if same and set(hosts) <= {"127.0.0.1", "localhost"} else None

    def next_envs() -> WorkerEnvs:
        hosts = local_hosts()
        if not hosts:
            return worker_envs
        cluster = local_cluster(len(hosts), hosts[0])
        return [
            {**env, TF_CONFIG: json.dumps(tf_config(cluster, json.loads(env[TF_CONFIG])["task"]["index"]))}
            for env in worker_envs
        ]

    return next_envs
