"""Run a step in another Python interpreter (``python -m airflow_ml_provider.ml``), streaming its log."""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from airflow_ml_provider import __version__
from airflow_ml_provider.exceptions import StepFailed, StepTimeout
from airflow_ml_provider.ml.__main__ import PARENT_PID_ENV
from airflow_ml_provider.ml.execute import HARMLESS_NATIVE_LINE, json_round_trip
from airflow_ml_provider.ml.scratch import scratch_dir
from airflow_ml_provider.runners._logger import StepLogger

if TYPE_CHECKING:
    from airflow_ml_provider.runners.warm import WarmStep

log = logging.getLogger(__name__)

# The directory that holds the ``airflow_ml_provider`` package (added to the child's PYTHONPATH
# when the other interpreter does not have the package installed).
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
KEEP_LINES = 50
REPORT_LINES = 20
# How long to wait for the output pipe to close after the child exited (grandchildren may hold it).
DRAIN_SECONDS = 5.0

CHECK_SECONDS = 120.0
# The line that says what went wrong, at the end of a failed step's output: "ValueError: ...",
# "pkg.errors.StepFailed: ...", or the entrypoint's "error: ..." (bad arguments, unresolved code).
_ERROR_LINE = re.compile(
    r"^(error: |[A-Za-z_][\w.]*(Error|Exception|Exit|Failed|Failure|Interrupt|Timeout)\b)"
)

# The step entrypoint refuses another provider version than this one (Airflow's environment).
VERSION_ARGS = ("--provider-version", __version__)

_PROBE = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('airflow_ml_provider') else 3)"
_importable_cache: dict[tuple[str, str, str | None], bool] = {}
# When the warm path failed for an interpreter (monotonic time): the steps of the next minute start
# cold without trying (and saying) it again.
_warm_failed: dict[tuple[str, str], float] = {}
WARM_RETRY_SECONDS = 60.0


def _check_interpreter(python: str) -> str:
    """
    Return the interpreter's path after checking that it exists and is executable.

    :param python: a path, or a bare command name looked up on ``PATH``.
    """
    found = python if os.sep in python else shutil.which(python)
    if found is None or not os.path.isfile(found):
        raise FileNotFoundError(
            f"Python interpreter {python!r} does not exist; give the full path of the interpreter of "
            "the environment that should run the step (e.g. /opt/tf-env/bin/python)."
        )
    if not os.access(found, os.X_OK):
        raise PermissionError(f"Python interpreter {found!r} is not executable (check its permissions).")
    return found


def _package_importable(python: str, env: dict[str, str], cwd: str | None) -> bool:
    """
    Tell whether ``python`` (with this env and cwd) can import ``airflow_ml_provider``; cached.

    :param python: the interpreter.
    :param env: the child's environment.
    :param cwd: the child's working directory.
    """
    key = (python, env.get("PYTHONPATH", ""), cwd)
    if key not in _importable_cache:
        probe = subprocess.run(
            [python, "-c", _PROBE], env=env, cwd=cwd, capture_output=True, timeout=60, check=False
        )
        _importable_cache[key] = probe.returncode == 0
    return _importable_cache[key]


def _describe_exit(returncode: int) -> str:
    """
    Describe an exit status, naming the signal when the child was killed by one.

    :param returncode: ``Popen.returncode`` (negative: killed by that signal).
    """
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"exit code {returncode}, killed by {name}"
    return f"exit code {returncode}"


def _group_alive(pgid: int) -> bool:
    """
    Tell whether a live process of the group exists. Zombies do not count: ``killpg(pgid, 0)``
    finds them, and an init that does not reap them (as in some containers) keeps them forever.

    :param pgid: the process group id.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc").is_dir():
        return True
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            fields = stat_file.read_text().rpartition(")")[2].split()
            if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                return True
    return False


def _failure(
    cls: type[StepFailed], step: str, what: str, lines: collections.deque[str], returncode: int | None
) -> StepFailed:
    """
    Build the error of a failed step; its message ends with the last lines of output.

    :param cls: ``StepFailed`` or ``StepTimeout``.
    :param step: the step's name.
    :param what: what happened, e.g. ``failed in /env/bin/python (exit code 1)``.
    :param lines: the kept lines of output.
    :param returncode: the child's exit status.
    """
    tail = list(lines)[-REPORT_LINES:]
    # The output is already in the log (streamed line by line): name the error once, not its lines.
    said = next((line for line in reversed(tail) if _ERROR_LINE.match(line)), None)
    where = "its output is above" if tail else "it wrote no output"
    message = (
        f"Step {step!r} {what}: {said.strip()} ({where})" if said else f"Step {step!r} {what} ({where})."
    )
    return cls(step, message, last_lines=tail, returncode=returncode)


def _collect(fd: int, chunks: list[bytes]) -> None:
    """
    Read a file descriptor to its end into ``chunks``; runs in a thread.

    :param fd: the read end of a pipe (closed at the end).
    :param chunks: where the bytes go.
    """
    with os.fdopen(fd, "rb") as pipe:
        for chunk in iter(lambda: pipe.read(65536), b""):
            chunks.append(chunk)


def _pump(pipe: IO[bytes], step: str, logger: StepLogger, lines: collections.deque[str]) -> None:
    """
    Log each line of the child's output as it arrives and keep the last ones; runs in a thread.

    :param pipe: the child's merged stdout and stderr.
    :param step: the step's name (prefix of each logged line).
    :param logger: where the lines go.
    :param lines: the deque that keeps the last lines.
    """
    with pipe:
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            lines.append(line)
            # A library's known-harmless ERROR line (see HARMLESS_NATIVE_LINE) goes to DEBUG.
            emit = getattr(logger, "debug", logger.info) if HARMLESS_NATIVE_LINE.search(line) else logger.info
            try:
                emit("[step %s] %s", step, line)
            except Exception:  # a broken handler must not stop the draining of the pipe
                log.debug("Could not log a line of step %s", step, exc_info=True)


class PythonRunner:
    """
    Run a step in another Python interpreter, e.g. an isolated environment with the TensorFlow stack.

    The child runs ``python -m airflow_ml_provider.ml`` in its own process group; its output is
    streamed line by line into the logger; on timeout or interruption the whole group is killed.

    :param python: path of the interpreter; defaults to this one (``sys.executable``).
    :param timeout: seconds after which the step and all its children are killed.
    :param env: environment variables added to (a copy of) this process's environment.
    :param cwd: working directory of the child; defaults to this process's.
    :param kill_grace_seconds: seconds between SIGTERM and SIGKILL when killing the step.
    :param warm: start the step in a child of the interpreter's warm step server
        (:mod:`~airflow_ml_provider.ml.warm`: its heavy modules imported once, a fresh child per
        step); when that cannot work the step starts cold, with a warning saying why.
    :param warm_idle_seconds: a warm server started by this runner exits after this long idle.
    """

    def __init__(
        self,
        python: str | None = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        kill_grace_seconds: float = 5.0,
        *,
        warm: bool = False,
        warm_idle_seconds: float = 600.0,
    ) -> None:
        self.python = python or sys.executable
        self.timeout = timeout
        self.env = dict(env or {})
        self.cwd = cwd
        self.kill_grace_seconds = kill_grace_seconds
        self.warm = warm
        self.warm_idle_seconds = warm_idle_seconds
        self._proc: subprocess.Popen[bytes] | None = None
        self._warm_step: WarmStep | None = None
        self._killed = False
        self._logger: StepLogger = log

    def _child_env(self, python: str) -> dict[str, str]:
        """
        Build the child's environment; make sure it can import this package.

        :param python: the (checked) interpreter.
        """
        # PARENT_PID_ENV: the step stops by itself if this process dies without killing it (SIGKILL).
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1", PARENT_PID_ENV: str(os.getpid())}
        if not _package_importable(python, env, self.cwd):
            paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
            env["PYTHONPATH"] = os.pathsep.join([*paths, PACKAGE_PARENT])
        return env

    def kill(self) -> None:
        """Kill the running step with its whole process group (SIGTERM, then SIGKILL); for ``on_kill``."""
        proc, warm_step = self._proc, self._warm_step
        if proc is not None:
            self._killed = True
            self._kill_group(proc.pid, proc)
        if warm_step is not None:
            self._killed = True
            self._kill_group(warm_step.pid)

    def _kill_group(self, pgid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
        """
        SIGTERM the step's process group, wait up to the grace period, then SIGKILL what is left.

        :param pgid: the group: the step's process is its leader.
        :param proc: that process when it is this one's child (it is reaped here); None for a warm
            child, which its server reaps.
        """
        self._logger.info("Killing the process group %s of the step (SIGTERM)", pgid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_grace_seconds
        while time.monotonic() < deadline:
            if proc is not None:
                proc.poll()  # reap the leader, so that only live processes keep the group alive
            if (proc is None or proc.returncode is not None) and not _group_alive(pgid):
                return
            time.sleep(0.1)
        if _group_alive(pgid):
            self._logger.warning(
                "Process group %s outlived SIGTERM by %ss: SIGKILL", pgid, self.kill_grace_seconds
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        if proc is None:
            return
        try:  # bounded: kill() may run in a signal handler that interrupted a wait on this child
            proc.wait(timeout=self.kill_grace_seconds + 5.0)
        except subprocess.TimeoutExpired:
            self._logger.warning("Step process %s did not exit after SIGKILL", proc.pid)

    def check(self, step: str, spec: dict[str, Any]) -> None:
        """
        Check, in the interpreter and environment of the step, that its user code resolves.

        A quick child (``python -m airflow_ml_provider.ml STEP --check``) that imports nothing
        heavy: a ``run_fn`` or objective that does not exist fails here, before any worker imports
        TensorFlow. Nothing runs when the step names no user code.

        :param step: a built-in step name or a ``package.module:function`` reference.
        :param spec: the step's input (JSON-serializable).
        :raises StepFailed: the user code does not resolve (the message says why, once).
        """
        from airflow_ml_provider.ml.registry import user_references

        if not user_references(step, spec):
            return
        python = _check_interpreter(self.python)
        spec = json_round_trip(spec, step=step, what="spec")
        with scratch_dir("ml-check") as tmp:
            spec_file = Path(tmp, "spec.json")
            spec_file.write_text(json.dumps(spec), encoding="utf-8")
            cmd = [
                python,
                "-m",
                "airflow_ml_provider.ml",
                step,
                "--spec",
                str(spec_file),
                "--check",
                *VERSION_ARGS,
            ]
            done = self._check_warm(cmd, step) if self.warm else None
            if done is None:
                try:
                    cold = subprocess.run(
                        cmd, env=self._child_env(python), cwd=self.cwd, capture_output=True,
                        timeout=CHECK_SECONDS, check=False,
                    )  # fmt: skip
                except subprocess.TimeoutExpired:
                    self._logger.warning("Step %s: the check of its user code timed out; running it", step)
                    return
                done = (cold.returncode, cold.stdout + cold.stderr)
        returncode, raw = done
        if returncode == 0:
            return
        output = raw.decode("utf-8", errors="replace").splitlines()
        said = next((line for line in reversed(output) if line.startswith("error: ")), None)
        if said is None:
            said = "; ".join(output[-3:]) or f"exit code {returncode}"
        reason = said.removeprefix("error: ")
        raise StepFailed(
            step,
            f"Step {step!r} cannot start: {reason}",
            last_lines=output[-REPORT_LINES:],
            returncode=returncode,
        )

    def _warm_env(self) -> dict[str, str]:
        """A warm child's environment (its server finds this package; the child learns its parent)."""
        return {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}

    def _server_pythonpath(self, python: str) -> str:
        """``PYTHONPATH`` of the warm server: this package's folder when the interpreter lacks it."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return "" if _package_importable(python, env, "/") else PACKAGE_PARENT

    def _start_warm(self, cmd: list[str], step: str) -> WarmStep | None:
        """
        Start ``cmd`` in a child of the warm server; None (after a warning) when it cannot.

        :param cmd: the command line; ``cmd[0]`` is the interpreter, ``cmd[3:]`` the arguments.
        :param step: the step's name.
        """
        from airflow_ml_provider.runners.warm import WARM_DIR_ENV, WarmStarting, WarmUnavailable, start_step

        key = (cmd[0], os.environ.get(WARM_DIR_ENV, ""))
        failed_at = _warm_failed.get(key)
        if failed_at is not None and time.monotonic() - failed_at < WARM_RETRY_SECONDS:
            return None  # said once already (the check, another worker of the gang)
        try:
            warm_step = start_step(
                cmd[0], cmd[3:], env=self._warm_env(), cwd=self.cwd,
                idle_seconds=self.warm_idle_seconds, server_pythonpath=lambda: self._server_pythonpath(cmd[0]),
            )  # fmt: skip
        except WarmStarting as err:
            self._logger.info("Step %s starts in a new interpreter: %s", step, err)
            return None
        except WarmUnavailable as err:
            _warm_failed[key] = time.monotonic()
            self._logger.warning("Step %s starts in a new interpreter (cold): %s", step, err)
            return None
        _warm_failed.pop(key, None)
        return warm_step

    def _check_warm(self, cmd: list[str], step: str) -> tuple[int, bytes] | None:
        """
        Run a ``--check`` command in a warm child; its exit code and output, or None to run it cold.

        :param cmd: the command line.
        :param step: the step's name.
        """
        warm_step = self._start_warm(cmd, step)
        if warm_step is None:
            return None
        chunks: list[bytes] = []
        reader = threading.Thread(target=_collect, args=(warm_step.output, chunks), daemon=True)
        reader.start()
        try:
            returncode = warm_step.wait(CHECK_SECONDS)
        except TimeoutError:
            self._logger.warning("Step %s: the check of its user code timed out; running it", step)
            return (0, b"")
        except ConnectionError:
            return None
        finally:
            warm_step.close()
        reader.join(DRAIN_SECONDS)
        return returncode, b"".join(chunks)

    def run(
        self, step: str, spec: dict[str, Any], *, logger: StepLogger | None = None, check: bool = True
    ) -> dict[str, Any]:
        """
        Run the step in the interpreter and return its result.

        :param step: a built-in step name or a ``package.module:function`` reference importable by
            the interpreter.
        :param spec: the step's input (JSON-serializable).
        :param logger: where the child's output lines go; defaults to this module's logger.
        :param check: first check cheaply that the user code the step names resolves (:meth:`check`).
        :raises StepFailed: the user code does not resolve, or the child exited with an error or
            wrote no valid result; the message names the error once (the output is in the log).
        :raises StepTimeout: the step ran past ``timeout`` and was killed.
        :raises FileNotFoundError: the interpreter does not exist (``PermissionError``: not executable).
        :raises TypeError: the spec is not JSON-serializable.
        """
        self._logger = logger or log
        python = _check_interpreter(self.python)
        spec = json_round_trip(spec, step=step, what="spec")
        if check:
            self.check(step, spec)
        with scratch_dir("ml-step") as tmp:
            spec_file, result_file = Path(tmp, "spec.json"), Path(tmp, "result.json")
            spec_file.write_text(json.dumps(spec), encoding="utf-8")
            cmd = [python, "-m", "airflow_ml_provider.ml", step, "--spec", str(spec_file), *VERSION_ARGS]
            self._execute([*cmd, "--result", str(result_file)], step)
            return self._read_result(result_file, step)

    def _execute(self, cmd: list[str], step: str) -> None:
        """
        Start the child, stream its output, wait for it (killing it on timeout or interruption).

        :param cmd: the command line; ``cmd[0]`` is the interpreter.
        :param step: the step's name.
        """
        warm_step = self._start_warm(cmd, step) if self.warm else None
        if warm_step is not None:
            self._execute_warm(warm_step, cmd, step)
            return
        env = self._child_env(cmd[0])
        self._logger.info("Running step %s with %s", step, cmd[0])
        lines: collections.deque[str] = collections.deque(maxlen=KEEP_LINES)
        self._killed = False
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, cwd=self.cwd, start_new_session=True,
        )  # fmt: skip
        self._proc = proc
        assert proc.stdout is not None
        reader = threading.Thread(
            target=_pump, args=(proc.stdout, step, self._logger, lines), name=f"step-{step}", daemon=True
        )
        reader.start()
        try:
            # Always a timed wait: it polls without holding Popen's lock for long, so kill() can
            # reap the child from a signal handler (Airflow calls on_kill from its SIGTERM handler).
            returncode = proc.wait(timeout=self.timeout if self.timeout is not None else math.inf)
        except subprocess.TimeoutExpired:
            self._kill_group(proc.pid, proc)
            self._drain(reader, proc.pid, proc)
            what = (
                f"ran past its timeout of {self.timeout}s in {cmd[0]} and was killed with its process group"
            )
            raise _failure(StepTimeout, step, what, lines, proc.returncode) from None
        except BaseException:
            self._kill_group(proc.pid, proc)
            raise
        finally:
            self._proc = None
        self._drain(reader, proc.pid, proc)
        if returncode != 0:
            killed = " (killed by PythonRunner.kill())" if self._killed else ""
            what = f"failed in {cmd[0]} ({_describe_exit(returncode)}){killed}"
            raise _failure(StepFailed, step, what, lines, returncode)

    def _execute_warm(self, warm_step: WarmStep, cmd: list[str], step: str) -> None:
        """
        Stream a warm child's output and wait for its end (killing it on timeout or interruption).

        :param warm_step: the child.
        :param cmd: the command line it runs.
        :param step: the step's name.
        """
        self._logger.info(
            "Running step %s with %s (warm: child %s of its step server)", step, cmd[0], warm_step.pid
        )
        lines: collections.deque[str] = collections.deque(maxlen=KEEP_LINES)
        self._killed = False
        output = os.fdopen(warm_step.output, "rb")
        reader = threading.Thread(
            target=_pump, args=(output, step, self._logger, lines), name=f"step-{step}", daemon=True
        )
        reader.start()
        self._warm_step = warm_step
        try:
            returncode = warm_step.wait(self.timeout)
        except TimeoutError:
            self._kill_group(warm_step.pid)
            self._drain(reader, warm_step.pid)
            what = (
                f"ran past its timeout of {self.timeout}s in {cmd[0]} and was killed with its process group"
            )
            raise _failure(StepTimeout, step, what, lines, None) from None
        except ConnectionError as err:
            self._kill_group(warm_step.pid)
            self._drain(reader, warm_step.pid)
            raise _failure(StepFailed, step, f"lost its process in {cmd[0]}: {err}", lines, None) from None
        except BaseException:
            self._kill_group(warm_step.pid)
            raise
        finally:
            self._warm_step = None
            warm_step.close()
        self._drain(reader, warm_step.pid)
        if returncode != 0:
            killed = " (killed by PythonRunner.kill())" if self._killed else ""
            what = f"failed in {cmd[0]} ({_describe_exit(returncode)}){killed}"
            raise _failure(StepFailed, step, what, lines, returncode)

    def _drain(
        self, reader: threading.Thread, pgid: int, proc: subprocess.Popen[bytes] | None = None
    ) -> None:
        """
        Wait until all output is logged; kill processes the step left behind that hold the pipe.

        :param reader: the thread that pumps the output.
        :param pgid: the step's process group (the step itself has ended).
        :param proc: the step's process when it is this one's child.
        """
        reader.join(DRAIN_SECONDS)
        if reader.is_alive():
            self._logger.warning(
                "Processes left by step (group %s) still hold its output: killing them", pgid
            )
            self._kill_group(pgid, proc)
            reader.join(DRAIN_SECONDS)

    @staticmethod
    def _read_result(result_file: Path, step: str) -> dict[str, Any]:
        """
        Read the result the child wrote.

        :param result_file: the ``--result`` file.
        :param step: the step's name.
        """
        try:
            result = json.loads(result_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StepFailed(
                step, f"Step {step!r} exited with code 0 but wrote no result file {result_file}."
            ) from None
        except (OSError, ValueError) as err:
            raise StepFailed(
                step, f"Step {step!r}: cannot read its result file {result_file}: {err}"
            ) from err
        if not isinstance(result, dict):
            raise StepFailed(step, f"Step {step!r}: its result file {result_file} holds no JSON object.")
        return result
