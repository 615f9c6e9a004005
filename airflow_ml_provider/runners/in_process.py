"""Run a step in this interpreter, with the same JSON contract as the other runners."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any

from airflow_ml_provider.exceptions import StepFailed
from airflow_ml_provider.ml.registry import resolve_step
from airflow_ml_provider.runners._logger import StepLogger

log = logging.getLogger(__name__)

_JSON_SCALARS = (str, int, float, bool, type(None))

# Lines native libraries write to stderr at ERROR level that are harmless. TensorFlow 2.16's wheels
# register XLA's CUDA plugins twice and say so at every import, with a GPU or without
# (tensorflow/tensorflow#62075); the second registration is ignored. Airflow's task supervisor logs
# a task's stderr at ERROR, so a clean run would show them as errors. (PythonRunner logs them at
# DEBUG; here they are dropped, since a log record written back to stderr would come round again.)
HARMLESS_NATIVE_LINE = re.compile(
    r"Unable to register cu(FFT|DNN|BLAS) factory: Attempting to register factory for plugin cu\w+ "
    r"when one has already been registered"
)


@contextlib.contextmanager
def _harmless_native_lines_dropped() -> Iterator[None]:
    """
    While the step runs, pass what is written to file descriptor 2 through a pipe that drops the
    known-harmless lines (native code writes there directly, past ``sys.stderr``); the rest goes
    to the real stderr unchanged.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    read_fd, write_fd = os.pipe()

    def pump() -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            for line in iter(pipe.readline, b""):
                if not HARMLESS_NATIVE_LINE.search(line.decode("utf-8", errors="replace")):
                    with contextlib.suppress(OSError):
                        os.write(saved, line)

    reader = threading.Thread(target=pump, name="step-stderr", daemon=True)
    reader.start()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader drains and ends
        reader.join(5.0)
        if not reader.is_alive():  # else a process the step started still writes through it
            os.close(saved)


def _find_unserializable(value: Any, path: str, seen: set[int]) -> tuple[str, str] | None:
    """
    Return ``(key path, reason)`` of the first value that ``json.dumps`` rejects, or ``None``.

    :param value: the value to inspect.
    :param path: the key path of ``value`` so far, e.g. ``spec['a'][0]``.
    :param seen: ids of the containers on the current path (to report cycles).
    """
    if isinstance(value, _JSON_SCALARS):
        return None
    if not isinstance(value, dict | list | tuple):
        return path, f"{type(value).__name__} is not JSON-serializable"
    if id(value) in seen:
        return path, "circular reference"
    seen = seen | {id(value)}
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(value, dict) and not isinstance(key, _JSON_SCALARS):
            return f"{path}[{key!r}]", f"key of type {type(key).__name__} is not JSON-serializable"
        found = _find_unserializable(item, f"{path}[{key!r}]", seen)
        if found:
            return found
    return None


def json_round_trip(value: Any, *, step: str, what: str) -> Any:
    """
    Return ``value`` after a round trip through JSON, as another interpreter would receive it.

    :param value: the spec or result of a step.
    :param step: the step's name, for the error message.
    :param what: ``"spec"`` or ``"result"``: names the value in the error message.
    :raises TypeError: ``value`` cannot be written as JSON; the message names the key path.
    """
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        found = _find_unserializable(value, what, set())
        where, reason = found if found else (what, str(err))
        raise TypeError(
            f"Step {step!r}: the {what} must be JSON-serializable, but {where} is not ({reason}). "
            "Use only dicts with str keys, lists, str, int, float, bool and None."
        ) from err


def as_result_dict(result: Any, *, step: str) -> dict[str, Any]:
    """
    Check that a step returned a dict (a JSON object) and return it.

    :param result: what the step returned.
    :param step: the step's name, for the error message.
    :raises TypeError: the step returned something else.
    """
    if not isinstance(result, dict):
        raise TypeError(
            f"Step {step!r} must return a dict (a JSON object), but returned {type(result).__name__}."
        )
    return result


class InProcessRunner:
    """Run a step in this interpreter: no isolation, lowest overhead; spec and result go through JSON."""

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
        func = resolve_step(step)
        spec_copy = json_round_trip(spec, step=step, what="spec")
        logger.info("Running step %s in-process", step)
        try:
            with _harmless_native_lines_dropped():
                result = func(spec_copy)
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
        return as_result_dict(json_round_trip(result, step=step, what="result"), step=step)
