"""Run a step in this interpreter, with the same JSON contract as the other runners.

The execution itself (JSON round trips, the native-stderr pipe) is the step layer's
(:mod:`airflow_ml_provider.ml.execute`), shared with the step entrypoint; this runner adds the
environment a step may need and turns the step's exception into :class:`StepFailed`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

from airflow_ml_provider.exceptions import StepEnvironmentError, StepFailed
from airflow_ml_provider.ml.execute import (
    HARMLESS_NATIVE_LINE,
    as_result_dict,
    call_step,
    json_round_trip,
    native_line_level,
    native_log,
    prepare_step,
    step_result,
)
from airflow_ml_provider.runners._logger import StepLogger

__all__ = [
    "HARMLESS_NATIVE_LINE",
    "InProcessRunner",
    "as_result_dict",
    "json_round_trip",
    "native_line_level",
    "native_log",
]

log = logging.getLogger(__name__)

# One process environment: in-process steps that set variables take turns (re-entrant, so that a
# step may itself run a step in-process).
_ENVIRONMENT_LOCK = threading.RLock()


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    """Set ``env`` in ``os.environ`` under the module lock; restore the earlier values on exit."""
    if not env:
        yield
        return
    with _ENVIRONMENT_LOCK:
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _checked_env(env: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(env or {})
    bad = [name for name, value in env.items() if not (isinstance(name, str) and isinstance(value, str))]
    if bad:
        raise TypeError(f"InProcessRunner env: names and values must be str; {bad[0]!r} is not.")
    return env


class InProcessRunner:
    """
    Run a step in this interpreter: no isolation, lowest overhead; spec and result go through JSON.

    :param env: environment variables the step reads (``AIRFLOW_ML_TUNING_STORAGE``,
        ``AIRFLOW_ML_WORKER``, ...): set in ``os.environ`` while the step runs and restored after.
        An in-process step shares the worker's process, so these are visible to every thread in
        it meanwhile; steps with an ``env`` run one at a time in a process. A secret is better
        given to a step in another interpreter (``PythonRunner``), whose environment is its own.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = _checked_env(env)

    def run(self, step: str, spec: dict[str, Any], *, logger: StepLogger | None = None) -> dict[str, Any]:
        """
        Resolve and call the step; return its result after a JSON round trip.

        :param step: a built-in step name or a ``package.module:function`` reference.
        :param spec: the step's input; must be JSON-serializable (the step gets a copy).
        :param logger: where to log progress; defaults to this module's logger.
        :raises StepFailed: the step raised; the step's exception is its ``original``, and its
            traceback (where in the step it failed) is the one printed: no chained second one.
        :raises TypeError: the spec or the result is not JSON-serializable.
        """
        logger = logger or log
        func, spec_copy = prepare_step(step, spec)
        logger.info("Running step %s in-process", step)
        try:
            with _environment(self.env):
                result = call_step(func, spec_copy, step=step)
        except StepEnvironmentError:
            raise  # says what to do in one line; the step never started
        except Exception as err:
            last_lines = traceback.format_exception_only(err)
            failed = StepFailed(
                step,
                f"Step {step!r} failed in-process: {type(err).__name__}: {err}",
                last_lines=[line.rstrip("\n") for line in last_lines],
                original=err,
            )
            # The step's frames, not a chained "direct cause" traceback with the same message twice.
            raise failed.with_traceback(err.__traceback__) from None
        return step_result(result, step=step)
