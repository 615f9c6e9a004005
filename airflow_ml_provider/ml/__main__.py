"""Run one step: ``python -m airflow_ml_provider.ml <step> --spec FILE --result FILE``.

Exit codes (:mod:`airflow_ml_provider.ml.exit_codes`): 0 the result was written; 1 the step failed
(traceback logged, no result file); 2 bad arguments (missing or invalid spec file, unknown step,
user code that does not resolve), reported on one line; 75 a worker of a gang lost a peer
(TensorFlow's collective errors, or :class:`~airflow_ml_provider.ml.exit_codes.GangRestart`),
reported on one line: the launcher restarts the gang, which resumes from its last checkpoint. Logs go to stderr, so that the parent (``PythonRunner``) can stream them.
``--list`` prints the built-in step names. ``--check`` only checks, cheaply (no TensorFlow import),
that the step and the user code its spec names (a ``run_fn``, an objective) resolve here: the
launchers run it once before they start any worker.

In a pod, which shares no file with the task that started it, ``--mlflow-run RUN_ID`` also records
the result in that MLflow run (:data:`STEP_RESULT_ARTIFACT`), and ``--outputs-artifact-path PATH``
the spec's ``output_dir`` under ``PATH``; only the chief does (no ``JOB_COMPLETION_INDEX``, or 0).
The server and its credentials come from MLflow's own variables (``MLFLOW_TRACKING_URI``,
``MLFLOW_TRACKING_USERNAME`` ...), as a pod gets them from a Secret. When that upload fails the
exit code is 1, with one ``error:`` line, and the result file stays.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from airflow_ml_provider import __version__
from airflow_ml_provider.exceptions import StepEnvironmentError
from airflow_ml_provider.ml.exit_codes import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_RETRY,
    EXIT_USAGE,
    GangRestart,
    lost_peer,
)

# Where --mlflow-run records the step's result in the run's artifacts (the name the launchers import).
from airflow_ml_provider.vocabulary import ARTIFACT_STEP_RESULT as STEP_RESULT_ARTIFACT

# Not __name__: under ``python -m`` that is "__main__", which says nothing in the parent's log.
log = logging.getLogger("airflow_ml_provider.ml")

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
# Set by PythonRunner: the pid of the process that started this step.
PARENT_PID_ENV = "AIRFLOW_ML_PARENT_PID"
PARENT_CHECK_SECONDS = 0.5
# Set by Kubernetes in each pod of an Indexed Job; only index 0 (the chief) records in MLflow.
COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
# "scheme://user:password@": removed from any address an error line quotes.
_USERINFO = re.compile(r"(?<=://)[^/?#@\s'\"]*@")


class UsageError(Exception):
    """Bad arguments: reported on one line, exit code 2."""


class RecordingFailed(Exception):
    """The result file was written but recording it in MLflow failed: one line, exit code 1."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_ml_provider.ml",
        description="Run a step: read the JSON spec, write the JSON result.",
    )
    parser.add_argument("step", nargs="?", help="built-in step name or package.module:function")
    parser.add_argument("--spec", type=Path, help="JSON file with the step's input")
    parser.add_argument("--result", type=Path, help="where to write the step's JSON result")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    parser.add_argument("--list", action="store_true", help="print the built-in step names and exit")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only check that the step and its user code resolve (no --result)",
    )
    parser.add_argument(
        "--mlflow-run",
        metavar="RUN_ID",
        help=f"also record the result in this MLflow run as {STEP_RESULT_ARTIFACT} ({TRACKING_URI_ENV})",
    )
    parser.add_argument(
        "--provider-version",
        metavar="VERSION",
        help="the provider version of the Airflow environment that started the step: another "
        "version here is refused before the step runs",
    )
    parser.add_argument(
        "--outputs-artifact-path",
        metavar="PATH",
        help="with --mlflow-run: also log the spec's output_dir to this artifact path of the run",
    )
    return parser


def _setup_logging(level_name: str) -> None:
    """
    Send log records to stderr, one line each.

    :param level_name: a logging level name.
    """
    level = logging.getLevelName(level_name.upper())
    if not isinstance(level, int):
        raise UsageError(f"--log-level {level_name!r} is not a level: use DEBUG, INFO, WARNING or ERROR.")
    logging.basicConfig(stream=sys.stderr, format=LOG_FORMAT, level=level, force=True)


def _read_spec(spec_file: Path) -> dict[str, Any]:
    """
    Read the spec file, which must hold a JSON object.

    :param spec_file: the ``--spec`` file.
    """
    try:
        text = spec_file.read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"cannot read the spec file {spec_file} ({err.strerror}): check --spec.") from err
    try:
        spec = json.loads(text)
    except ValueError as err:
        raise UsageError(f"the spec file {spec_file} is not valid JSON ({err}): fix its content.") from err
    if not isinstance(spec, dict):
        raise UsageError(f"the spec file {spec_file} must hold a JSON object, not {type(spec).__name__}.")
    return spec


def _check_step(step: str) -> None:
    """
    Resolve the step; an unknown name or a module that does not exist is a usage error.

    An ``ImportError`` raised while importing an existing module propagates (a step failure).

    :param step: the step name or reference.
    """
    from airflow_ml_provider.ml.registry import resolve_step, step_reference

    try:
        module_name = step_reference(step).partition(":")[0]
        resolve_step(step)
    except ValueError as err:
        raise UsageError(f"{err} Run with --list to see the built-in steps.") from err
    except ImportError as err:
        missing = getattr(err.__cause__, "name", None)
        if (
            isinstance(err.__cause__, ModuleNotFoundError)
            and missing
            and (module_name == missing or module_name.startswith(missing + "."))
        ):
            raise UsageError(str(err)) from err
        raise


def _check_references(step: str, spec: dict[str, Any]) -> None:
    """
    Check, without importing them, that the user code the step will call resolves here.

    Done before the step's heavy imports (TensorFlow takes 10 s and more), so that a typo in a
    ``run_fn`` fails at once, in one line.

    :param step: the step name or reference.
    :param spec: the step's spec.
    """
    from airflow_ml_provider.ml.registry import check_reference, user_references

    try:
        references = user_references(step, spec)
        problems = [(what, ref, check_reference(ref)) for what, ref in references]
    except ValueError as err:
        raise UsageError(f"{err} Run with --list to see the built-in steps.") from err
    for what, ref, problem in problems:
        if problem:
            raise UsageError(f"{what} {ref!r} does not resolve in {sys.executable}: {problem}.")


def _check_provider_version(expected: str | None) -> None:
    """
    Refuse to run a step with another provider version than the Airflow environment that started it.

    The spec and result formats belong to one version: a step environment (or step image) left on
    an older release would misread a newer operator's spec, or answer in a form it cannot read.

    :param expected: ``--provider-version``, the version in Airflow's environment; None: no check.
    """
    if expected is None or expected == __version__:
        return
    raise UsageError(
        f"the step environment {sys.executable} holds airflow-ml-provider {__version__}, but Airflow's "
        f"environment runs {expected}: install the same version in both (in the step environment: "
        f"pip install 'airflow-ml-provider[tensorflow,tuning]=={expected}', or make step-env in a "
        f"checkout; for pods, a step image built with {expected})."
    )


def _remove(path: Path) -> None:
    """
    Remove a file if it exists.

    :param path: the file.
    """
    path.unlink(missing_ok=True)


def _write_atomically(result: dict[str, Any], result_file: Path) -> None:
    """
    Write the result to ``FILE.tmp``, then rename it to ``FILE``.

    :param result: the step's result.
    :param result_file: the ``--result`` file.
    """
    tmp = result_file.with_name(result_file.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as out:
            json.dump(result, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, result_file)
    finally:
        _remove(tmp)


def _watch_parent() -> None:
    """
    Kill this step's process group when the process that started it is gone.

    A task process killed with SIGKILL cannot stop its steps, which run in process groups of their
    own; without this they would go on (a retry would then run beside them: two tuning workers on
    one trial, two trainers writing one model).
    """
    expected = os.environ.get(PARENT_PID_ENV)
    if not expected or not expected.isdigit():
        return

    def watch() -> None:
        while os.getppid() == int(expected):
            time.sleep(PARENT_CHECK_SECONDS)
        log.error("The process that started this step (pid %s) is gone: stopping the step", expected)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _check_recording(args: argparse.Namespace) -> None:
    """
    Check the MLflow options before the step runs: a run, and a server to find it on.

    :param args: the parsed arguments.
    """
    if args.outputs_artifact_path and not args.mlflow_run:
        raise UsageError("--outputs-artifact-path needs --mlflow-run RUN_ID (the run to log to).")
    if args.mlflow_run and not os.environ.get(TRACKING_URI_ENV):
        raise UsageError(
            f"--mlflow-run {args.mlflow_run} needs {TRACKING_URI_ENV} in the environment (the tracking server)."
        )


def _record_in_mlflow(
    step: str, spec: dict[str, Any], result: dict[str, Any], run_id: str, outputs_path: str | None
) -> None:
    """
    Log the result, and the spec's ``output_dir`` when asked, to the MLflow run ``run_id``.

    :param step: the step name or reference.
    :param spec: the step's spec (its ``output_dir``).
    :param result: the step's result, as written to the result file.
    :param run_id: the ``--mlflow-run``.
    :param outputs_path: the ``--outputs-artifact-path``, or ``None``.
    """
    output_dir = spec.get("output_dir") if outputs_path else None
    if outputs_path and not (isinstance(output_dir, str) and os.path.isdir(output_dir)):
        log.warning("Step %s: the spec's output_dir %r is not a folder: no outputs to log", step, output_dir)
        output_dir = None
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        client.log_text(run_id, json.dumps(result), STEP_RESULT_ARTIFACT)
        if output_dir:
            client.log_artifacts(run_id, output_dir, outputs_path)
    except Exception as err:
        tracking = _USERINFO.sub("", os.environ.get(TRACKING_URI_ENV, ""))
        said = _USERINFO.sub("", f"{type(err).__name__}: {err}".splitlines()[0])[:300]
        raise RecordingFailed(
            f"step {step}: recording the result in MLflow run {run_id} at {tracking} failed ({said}); "
            "check that the tracking server is reachable from here, that the run exists, and that "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) may write "
            "to it. The result file was kept."
        ) from err
    log.info(
        "Step %s: result recorded in MLflow run %s as %s%s",
        step,
        run_id,
        STEP_RESULT_ARTIFACT,
        f", outputs under {outputs_path}" if output_dir else "",
    )


def _is_chief() -> bool:
    """Whether this process records in MLflow: not in an Indexed Job, or its completion index 0."""
    return os.environ.get(COMPLETION_INDEX_ENV, "0").strip() == "0"


def _run(args: argparse.Namespace) -> int:
    """
    Run the step, write its result and, when asked, record it in MLflow; return the exit code.

    :param args: the parsed arguments (the step, ``--spec``, ``--result`` and the MLflow options).
    """
    step: str = args.step
    result_file: Path = args.result
    if not result_file.parent.is_dir():
        raise UsageError(f"the directory of the result file {result_file} does not exist: check --result.")
    _remove(result_file)  # a stale result must never pass for this run's
    _check_recording(args)
    spec = _read_spec(args.spec)
    _check_references(step, spec)
    _check_step(step)
    from airflow_ml_provider.ml.execute import execute_step

    _watch_parent()
    log.info("Step %s: starting (pid %s)", step, os.getpid())
    result = execute_step(step, spec, logger=log)
    _write_atomically(result, result_file)
    log.info("Step %s: result written to %s", step, result_file)
    if args.mlflow_run and _is_chief():
        _record_in_mlflow(step, spec, result, args.mlflow_run, args.outputs_artifact_path)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """
    Command-line entry point; return the exit code.

    :param argv: the arguments (default ``sys.argv[1:]``).
    """
    args = _parser().parse_args(argv)
    try:
        _setup_logging(args.log_level)
        if args.list:
            from airflow_ml_provider.ml.registry import BUILTIN_STEPS

            sys.stdout.write("".join(f"{name}\n" for name in sorted(BUILTIN_STEPS)))
            return EXIT_OK
        _check_provider_version(args.provider_version)
        if args.check and args.step and args.spec is not None:
            _check_references(args.step, _read_spec(args.spec))
            return EXIT_OK
        if not args.step or args.spec is None or args.result is None:
            raise UsageError("give a step, --spec FILE and --result FILE (or --list).")
        return _run(args)
    except UsageError as err:
        sys.stderr.write(f"error: {err}\n")
        return EXIT_USAGE
    except RecordingFailed as err:  # the result file stays: the step itself succeeded
        sys.stderr.write(f"error: {err}\n")
        return EXIT_FAILED
    except StepEnvironmentError as err:  # the step could not run here: what to do, in one line
        sys.stderr.write(f"error: {err}\n")
        if args.result is not None:
            _remove(args.result)
        return EXIT_FAILED
    except Exception as err:
        if args.result is not None:
            _remove(args.result)
        return _step_failed(args.step, err)


def _step_failed(step: str, err: Exception) -> int:
    """
    Report a step's failure and return its exit code: :data:`EXIT_RETRY` (one line) when the gang
    lost a peer, else :data:`EXIT_FAILED` (the traceback).

    :param step: the step.
    :param err: what it raised.
    """
    peer = lost_peer(err)
    if peer is not None:  # transient: one line, and the launcher restarts the gang
        sys.stderr.write(f"error: {_restart_line(step, peer)}\n")
        return EXIT_RETRY
    # One traceback: the step's own error (StepFailed only wraps it for in-process callers).
    original = getattr(err, "original", None)
    log.error("Step %s failed", step, exc_info=original if original is not None else err)
    return EXIT_FAILED


# Words of the line that says why a collective op failed, in TensorFlow's many-line messages
# ("Graph execution error:", the node's Python stack, then "Collective ops is aborted by: ...").
_REASON_WORDS = ("aborted", "timeout", "unavailable", "cancelled", "deadline", "preempted")


def _restart_line(step: str, error: BaseException) -> str:
    """
    The one line of a worker that exits :data:`EXIT_RETRY`.

    :param step: the step.
    :param error: what :func:`~airflow_ml_provider.ml.exit_codes.lost_peer` found.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons = [line for line in lines if any(word in line.lower() for word in _REASON_WORDS)]
    said = (reasons or lines or [""])[0][:300]
    what = f"{type(error).__name__}: {said}" if said else type(error).__name__
    if isinstance(error, GangRestart):
        return f"step {step} asked for a gang restart ({what}); the gang restarts from its last checkpoint"
    return f"step {step} lost a peer of the gang: {what}; the gang restarts from its last checkpoint"


if __name__ == "__main__":
    sys.exit(main())
