"""Execute a step in this interpreter: the core every runner ends in.

``InProcessRunner`` calls it in the worker; the step entrypoint (``python -m airflow_ml_provider.ml``)
calls it in another interpreter or a pod. The spec and the result go through JSON either way, and
what the step's native code writes to file descriptor 2 is logged line by line at its own level.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from airflow_ml_provider import __version__
from airflow_ml_provider.exceptions import StepEnvironmentError
from airflow_ml_provider.ml.registry import resolve_step

log = logging.getLogger(__name__)

StepFunction = Callable[[dict[str, Any]], Any]

_JSON_SCALARS = (str, int, float, bool, type(None))

# Lines native libraries write to stderr at ERROR level that are harmless. TensorFlow 2.16's wheels
# register XLA's CUDA plugins twice and say so at every import, with a GPU or without
# (tensorflow/tensorflow#62075); the second registration is ignored. They are logged at DEBUG.
HARMLESS_NATIVE_LINE = re.compile(
    r"Unable to register cu(FFT|DNN|BLAS) factory: Attempting to register factory for plugin cu\w+ "
    r"when one has already been registered"
)

# The severity prefix of TensorFlow's C++ logging and of absl's: "2026-12-07 08:00:00.123456: I
# tensorflow/...", "E0000 00:00:1765094400.123456  123 cuda_dnn.cc:8310] ...", "W tensorflow/x.cc:1] ...".
_NATIVE_SEVERITY = re.compile(
    r"^\s*(?:"
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?: (?P<tf>[IWEF]) "
    r"|(?P<absl>[IWEF])\d{4} \d\d:\d\d:\d+(?:\.\d+)?\s"
    r"|(?P<bare>[IWEF]) [\w./-]+\.(?:cc|cpp|c|h):\d+\]"
    r")"
)
_SEVERITY_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}

# Where the lines a step writes to file descriptor 2 are logged.
native_log = logging.getLogger("airflow_ml_provider.stderr")


class InfoLogger(Protocol):
    def info(self, msg: Any, /, *args: Any, **kwargs: Any) -> Any: ...


def native_line_level(line: str) -> int:
    """
    The logging level of a line a step wrote to stderr.

    TensorFlow's and absl's lines carry their severity (I, W, E, F): INFO, WARNING, ERROR, CRITICAL;
    a known-harmless ERROR line (:data:`HARMLESS_NATIVE_LINE`) is DEBUG. Any other line (a Python
    library's ``print`` to stderr, a continuation line) is WARNING: it is kept, never hidden.
    """
    if HARMLESS_NATIVE_LINE.search(line):
        return logging.DEBUG
    match = _NATIVE_SEVERITY.match(line)
    if match is None:
        return logging.WARNING
    return _SEVERITY_LEVELS[match.group("tf") or match.group("absl") or match.group("bare")]


def _writes_to_fd2(logger: logging.Logger) -> bool:
    """Whether a record of ``logger`` may end up on file descriptor 2 (a handler writes there)."""
    current: logging.Logger | None = logger
    handlers = 0
    while current is not None:
        handlers += len(current.handlers)
        for handler in current.handlers:
            try:
                if handler.stream.fileno() == 2:  # type: ignore[attr-defined]
                    return True
            except Exception:  # no stream, or one without a descriptor (StringIO)
                continue
        current = current.parent if current.propagate else None
    return handlers == 0 and logging.lastResort is not None  # WARNING and above: to sys.stderr


@contextlib.contextmanager
def native_stderr_logged() -> Iterator[None]:
    """
    While the step runs, log each line written to file descriptor 2 at its own level.

    Native code (TensorFlow's C++ logging) writes to descriptor 2 directly, past ``sys.stderr``,
    and Airflow's task supervisor logs a task's stderr at ERROR: TensorFlow's INFO lines would show
    as errors. Descriptor 2 is therefore a pipe while the step runs; a reader thread logs each line
    to ``airflow_ml_provider.stderr`` at the level :func:`native_line_level` gives. When a handler of
    that logger itself writes to descriptor 2 (a console without Airflow's log routing), a logged line
    would come round again: then the lines go to the real stderr unchanged, but for the harmless
    ones. A line that cannot be logged is written to the real stderr. Descriptor 2 is restored on
    exit.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    to_logging = not _writes_to_fd2(native_log)
    read_fd, write_fd = os.pipe()

    def pump() -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            for raw in iter(pipe.readline, b""):
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                # A progress bar (tqdm: MLflow's artifact downloads) redraws itself after "\r": log its
                # last state, as a terminal would show it.
                line = next((part for part in reversed(line.split("\r")) if part.strip()), line)
                level = native_line_level(line)
                if to_logging:
                    try:
                        native_log.log(level, "%s", line)
                        continue
                    except Exception:  # a broken handler: the line goes to stderr
                        pass
                elif level == logging.DEBUG:
                    continue  # harmless (see HARMLESS_NATIVE_LINE)
                with contextlib.suppress(OSError):
                    os.write(saved, raw if raw.endswith(b"\n") else raw + b"\n")

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


def prepare_step(step: str, spec: dict[str, Any]) -> tuple[StepFunction, dict[str, Any]]:
    """
    Resolve the step and copy its spec through JSON (the step gets a copy, as in any runner).

    :param step: a built-in step name or a ``package.module:function`` reference.
    :param spec: the step's input.
    :raises TypeError: the spec is not JSON-serializable.
    """
    return resolve_step(step), json_round_trip(spec, step=step, what="spec")


# The step environment's packages (the tensorflow extra and what it brings): installable on Python
# 3.11 only, never in Airflow's environment (docs/install.md).
TENSORFLOW_STACK = frozenset(
    {
        "tensorflow",
        "tensorflow_data_validation",
        "tensorflow_model_analysis",
        "tensorflow_metadata",
        "tf_keras",
        "tfx_bsl",
        "apache_beam",
    }
)


def missing_stack_message(step: str, module: str) -> str:
    """What to do when ``step`` cannot import ``module`` (a package of :data:`TENSORFLOW_STACK`) here."""
    version = ".".join(map(str, sys.version_info[:3]))
    return (
        f"Step {step!r} needs {module} (the TensorFlow stack), which {sys.executable} (Python "
        f"{version}) cannot import. The stack installs on Python 3.11 only, in an environment of its "
        "own: build it (`make step-env`, or `python3.11 -m venv /opt/ml-steps && /opt/ml-steps/bin/pip "
        f"install 'airflow-ml-provider[tensorflow,tuning]=={__version__}'`), then set "
        "[ml_provider] step_python = /opt/ml-steps/bin/python (AIRFLOW__ML_PROVIDER__STEP_PYTHON) so "
        "that every step runs there, or give the task placement='interpreter', python=..., or "
        "placement='pod' with the step image. See docs/install.md."
    )


def call_step(func: StepFunction, spec: dict[str, Any], *, step: str = "step") -> Any:
    """
    Call a step function with its native stderr logged (:func:`native_stderr_logged`).

    :raises StepEnvironmentError: the step imports a package of the TensorFlow stack this interpreter
        lacks (the message says how to run it in the step environment).
    """
    with native_stderr_logged():
        try:
            return func(spec)
        except ModuleNotFoundError as err:
            top = (err.name or "").partition(".")[0]
            if top not in TENSORFLOW_STACK:
                raise
            raise StepEnvironmentError(missing_stack_message(step, top)) from None


def step_result(result: Any, *, step: str) -> dict[str, Any]:
    """
    The result as another interpreter would read it: a dict, after a JSON round trip.

    :raises TypeError: the result is not a JSON-serializable dict.
    """
    return as_result_dict(json_round_trip(result, step=step, what="result"), step=step)


def execute_step(step: str, spec: dict[str, Any], *, logger: InfoLogger | None = None) -> dict[str, Any]:
    """
    Resolve and call the step; return its result after a JSON round trip.

    The step's own exception propagates unchanged (its traceback is the one to print).

    :param step: a built-in step name or a ``package.module:function`` reference.
    :param spec: the step's input; must be JSON-serializable (the step gets a copy).
    :param logger: where to log progress; defaults to this module's logger.
    :raises TypeError: the spec or the result is not JSON-serializable.
    """
    func, spec_copy = prepare_step(step, spec)
    logger = logger or log
    logger.info("Running step %s in-process", step)
    started = time.perf_counter()
    result = step_result(call_step(func, spec_copy, step=step), step=step)
    # The step's own time, without its interpreter's start (benchmarks/loop_latency.py reads it).
    logger.info("Step %s computed in %.2f s", step, time.perf_counter() - started)
    return result
