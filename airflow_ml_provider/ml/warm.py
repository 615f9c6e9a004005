"""The warm step server: ``python -m airflow_ml_provider.ml.warm --socket PATH``.

One server per machine, user, step interpreter and import environment, started by the first task
that needs it (:mod:`airflow_ml_provider.runners.warm`). It imports the heavy modules once
(TensorFlow, tf_keras, TFDV, TFMA, MLflow, pyarrow, pandas and the provider's steps) and runs
no TensorFlow op, so that its runtime is never initialised here: each step then runs in a child
forked from it, which starts in milliseconds instead of the 10-30 s those imports cost. Each child
runs one step (``python -m airflow_ml_provider.ml`` in all but the start) and exits, so a step
that leaks memory or state, or crashes, leaves nothing behind for the next one.

Measured on this project's stack (TensorFlow 2.16, TFDV 1.16, TFMA 0.47, Python 3.11): a child
forked after these imports trains a Keras model in the same time as a fresh process does after its
imports, and forms a ``MultiWorkerMirroredStrategy`` gang with its siblings. What must not happen
is an op in the server itself: the strategy refuses a runtime that is already initialised ("Collective
ops must be configured at program startup") and a child forked after a ``fit`` can hang. So the
server imports, and never computes.

Protocol (a Unix stream socket in a folder only this user can open): the client sends one JSON
line ``{"argv": [...], "env": {...}, "cwd": "...", "client": PID}`` with one file descriptor
(``SCM_RIGHTS``): where the step's stdout and stderr go. The server answers ``{"pid": N}`` once
the child runs (``{"refused": "..."}`` when it will not run it), then ``{"exit": CODE}`` when the
child has ended (negative: killed by that signal). A client that goes away before its step has
ended (its task was killed) has its step's process group killed. The server exits after
``--idle-seconds`` without a step, or after its code or its libraries changed on disk (an
upgrade): it then refuses new steps with ``{"refused": "stale"}`` and stops listening, so that the
next task starts a server with the new code.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_ml_provider import __version__

log = logging.getLogger("airflow_ml_provider.ml.warm")

# Imported once by the server, in this order; a module that is not installed is skipped.
WARM_MODULES = (
    "numpy",
    "pandas",
    "pyarrow",
    "tensorflow",
    "tf_keras",
    "tensorflow_data_validation",
    "tensorflow_model_analysis",
    "mlflow",
    "mlflow.tracking",
    "optuna",
    "airflow_ml_provider.ml.execute",
    "airflow_ml_provider.ml.validation",
    "airflow_ml_provider.ml.training.step",
    "airflow_ml_provider.ml.evaluation.step",
    "airflow_ml_provider.ml.evaluation.infra",
    "airflow_ml_provider.ml.tuning.worker",
)
MAX_REQUEST_BYTES = 16 * 1024 * 1024
KILL_GRACE_SECONDS = 5.0
TICK_SECONDS = 0.2
# Environment variables read when the heavy modules are imported: they are part of the server's
# identity (a task with another value gets another server). The others are the step's own, set in
# its child.
IMPORT_ENV_PREFIXES = ("TF_", "CUDA", "LD_", "OMP_", "MKL_", "KMP_", "XLA_", "KERAS", "PYTHONHASH", "NVIDIA_")
# ...except these, which TensorFlow reads when a step uses them, not at import.
STEP_ENV = frozenset({"TF_CONFIG"})


def import_environment(env: dict[str, str]) -> dict[str, str]:
    """The variables of ``env`` that the imports read: they decide which server a step may use."""
    return {
        key: value
        for key, value in sorted(env.items())
        if key.startswith(IMPORT_ENV_PREFIXES) and key not in STEP_ENV
    }


@dataclass
class _Job:
    """A step running in a child of the server."""

    pid: int
    conn: socket.socket
    argv: list[str]
    started: float = field(default_factory=time.monotonic)
    term_sent: float | None = None


class WarmServer:
    """
    Listen on ``socket_path``, import the heavy modules, then fork one child per step.

    :param socket_path: the Unix socket (its folder exists, this user's only).
    :param idle_seconds: exit after this long without a running step or a new one.
    :param modules: the modules to import before serving.
    """

    def __init__(self, socket_path: str, idle_seconds: float, modules: tuple[str, ...] = WARM_MODULES):
        self.socket_path = socket_path
        self.ready_file = str(Path(socket_path).with_suffix(".ready"))
        self.idle_seconds = idle_seconds
        self.modules = modules
        self.jobs: dict[int, _Job] = {}
        self.listener: socket.socket | None = None
        self.watched: dict[str, int] = {}
        self.last_activity = time.monotonic()
        self.base_path: list[str] = []
        self._wake = self._wake_write = -1
        self._socket_inode = -1

    # -- start -------------------------------------------------------------------------------------

    def bind(self) -> None:
        """Listen on the socket (before the imports: the tasks that come meanwhile queue up)."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        for stale in (self.socket_path, self.ready_file):  # left by a server that died
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        listener.bind(self.socket_path)
        os.chmod(self.socket_path, 0o600)
        self._socket_inode = os.stat(self.socket_path).st_ino  # a later server's socket is not ours
        listener.listen(64)
        self.listener = listener

    def warm_up(self) -> None:
        """Import the heavy modules, without running any TensorFlow op."""
        # tf.keras is tf_keras in the steps (TFMA and MultiWorkerMirroredStrategy need it); it must be
        # chosen before TensorFlow resolves tf.keras, as the training step does in a fresh process.
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        started = time.monotonic()
        loaded = []
        for name in self.modules:
            if importlib.util.find_spec(name.partition(".")[0]) is None:
                continue
            try:
                importlib.import_module(name)
                loaded.append(name)
            except Exception:  # a module that cannot load here is loaded by the step itself
                log.warning("Could not import %s ahead of the steps", name, exc_info=True)
        self.base_path = sys.path[1:]
        Path(self.ready_file).touch()  # from now on tasks send their steps here instead of starting cold
        self.last_activity = time.monotonic()  # idle from now on, not from the start
        self.watched = _watched_files()
        log.info(
            "Warm step server %s (pid %s, Python %s): imported %s in %.1f s",
            __version__,
            os.getpid(),
            sys.version.split()[0],
            ", ".join(loaded),
            time.monotonic() - started,
        )

    # -- serve -------------------------------------------------------------------------------------

    def serve(self) -> int:
        """Accept steps until idle (or stale and without running steps); return the exit code."""
        signal.signal(signal.SIGTERM, lambda *_: self._stop("SIGTERM"))
        # A child's end wakes the loop at once (select returns on the wake-up pipe).
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        self._wake, self._wake_write = wake_read, wake_write
        while True:
            self._reap()
            if self.listener is None and not self.jobs:
                return 0
            if not self.jobs and time.monotonic() - self.last_activity > self.idle_seconds:
                log.info("Idle for %.0f s: stopping", self.idle_seconds)
                self._close_listener()
                return 0
            watch: list[Any] = [job.conn for job in self.jobs.values()]
            watch.append(self._wake)
            if self.listener is not None:
                watch.append(self.listener)
            try:
                readable, _, _ = select.select(watch, [], [], TICK_SECONDS)
            except InterruptedError:
                continue
            for sock in readable:
                if sock == self._wake:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake, 4096)
                elif sock is self.listener:
                    self._accept()
                else:
                    self._client_gone(sock)
            self._escalate()

    def _stop(self, why: str) -> None:
        log.info("%s: stopping, killing %d running step(s)", why, len(self.jobs))
        for job in self.jobs.values():
            _killpg(job.pid, signal.SIGKILL)
        self._close_listener()
        with contextlib.suppress(OSError):
            Path(self.socket_path).with_suffix(".pid").unlink()
        os._exit(0)

    def _close_listener(self) -> None:
        """
        Stop listening: remove the socket (if still this server's), so that new clients start a new
        server, then send the clients already queued there to it (``stopping``: they try again).
        """
        if self.listener is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.socket_path).st_ino == self._socket_inode:
                os.unlink(self.socket_path)
                os.unlink(self.ready_file)
        while _pending(self.listener):
            try:
                conn, _ = self.listener.accept()
                _, fds = _receive(conn)
            except (OSError, ValueError):
                continue
            for fd in fds:
                os.close(fd)
            _send(conn, {"refused": "stopping"})
            conn.close()
        self.listener.close()
        self.listener = None

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self.last_activity = time.monotonic()
        try:
            request, fds = _receive(conn)
        except _ClientLeft:  # it found this server still importing, and started its step cold
            conn.close()
            return
        except (OSError, ValueError) as err:
            log.warning("Dropped a request: %s", err)
            conn.close()
            return
        try:
            self._start(conn, request, fds)
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _start(self, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        refused = self._refusal(conn, request, fds)
        if refused:
            if refused == "stale":  # stop listening first: the client's next try starts a new server
                log.info("Code or libraries changed on disk: no new steps; exiting once none runs")
                self._close_listener()
            _send(conn, {"refused": refused})
            conn.close()
            return
        try:
            pid = os.fork()
        except OSError as err:
            _send(conn, {"refused": f"fork failed: {err}"})
            conn.close()
            return
        if pid == 0:  # the child: never returns
            self._child(request, fds[0])
        job = _Job(pid, conn, list(request["argv"]))
        self.jobs[pid] = job
        if not _send(conn, {"pid": pid}):  # the client is gone already
            _killpg(pid, signal.SIGKILL)
        log.info("Step %s: child %s for client %s", _step_name(job.argv), pid, request.get("client"))

    def _refusal(self, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> str | None:
        """Why this request is not run here (None: it is)."""
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        uid = int.from_bytes(creds[4:8], sys.byteorder)
        if uid != os.getuid():
            return "another user"
        if (
            len(fds) != 1
            or not isinstance(request.get("argv"), list)
            or not isinstance(request.get("env"), dict)
        ):
            return "malformed request"
        if _watched_files(self.watched) != self.watched:
            return "stale"
        return None

    def _child(self, request: dict[str, Any], output_fd: int) -> None:
        """Become the step: a process group of its own, the task's environment, then the entrypoint."""
        code = 1
        try:
            os.setsid()
            if self.listener is not None:
                self.listener.close()
            for job in self.jobs.values():
                job.conn.close()
            signal.set_wakeup_fd(-1)
            os.close(self._wake)
            os.close(self._wake_write)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(output_fd, 1)
            os.dup2(output_fd, 2)
            os.close(output_fd)
            os.close(devnull)
            with contextlib.suppress(AttributeError, ValueError):
                sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
            code = _run_step(request, self.base_path)
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        except BaseException:  # never back into the server's loop
            import traceback

            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _client_gone(self, conn: socket.socket) -> None:
        """A client's socket is readable: it went away, so its step is killed."""
        try:
            data = conn.recv(1)
        except OSError:
            data = b""
        if data:
            return
        for job in self.jobs.values():
            if job.conn is conn and job.term_sent is None:
                log.info(
                    "Client of step %s (child %s) is gone: killing the step", _step_name(job.argv), job.pid
                )
                _killpg(job.pid, signal.SIGTERM)
                job.term_sent = time.monotonic()

    def _escalate(self) -> None:
        now = time.monotonic()
        for job in self.jobs.values():
            if job.term_sent is not None and now - job.term_sent > KILL_GRACE_SECONDS:
                _killpg(job.pid, signal.SIGKILL)

    def _reap(self) -> None:
        while self.jobs:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self.jobs.pop(pid, None)
            if job is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            # What the step left in its process group goes with it, as after a cold step's end.
            _killpg(pid, signal.SIGKILL)
            _send(job.conn, {"exit": code})
            job.conn.close()
            self.last_activity = time.monotonic()
            log.info(
                "Step %s: child %s ended (%s) after %.1f s",
                _step_name(job.argv),
                pid,
                code,
                time.monotonic() - job.started,
            )


def _run_step(request: dict[str, Any], base_path: list[str]) -> int:
    """In the child: take the task's environment, working folder and path, then run the entrypoint."""
    env = {str(k): str(v) for k, v in request["env"].items()}
    cwd = request.get("cwd") or os.getcwd()
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    # As ``python -m`` would: the working folder, then PYTHONPATH, then the interpreter's own.
    pythonpath = _pythonpath(env)
    sys.path[:] = [cwd, *pythonpath, *[p for p in base_path if p not in pythonpath]]
    importlib.invalidate_caches()
    _run_site_customize(pythonpath)
    # Fresh randomness: without it every child would draw numpy's global numbers of the server.
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    from airflow_ml_provider.ml.__main__ import PARENT_PID_ENV, main

    os.environ[PARENT_PID_ENV] = str(os.getppid())  # the step ends if the server dies
    sys.argv = ["python -m airflow_ml_provider.ml", *request["argv"]]
    return main([str(a) for a in request["argv"]])


def _run_site_customize(pythonpath: list[str]) -> None:
    """Run a ``sitecustomize`` of the task's ``PYTHONPATH``, as a fresh interpreter would at start."""
    for folder in pythonpath:
        candidate = Path(folder, "sitecustomize.py")
        if candidate.is_file():
            loaded = sys.modules.get("sitecustomize")
            if loaded is not None and getattr(loaded, "__file__", None) == str(candidate):
                return
            spec = importlib.util.spec_from_file_location("sitecustomize", candidate)
            if spec is not None and spec.loader is not None:
                module = importlib.util.module_from_spec(spec)
                sys.modules["sitecustomize"] = module
                spec.loader.exec_module(module)
            return


def _pending(listener: socket.socket) -> bool:
    """Whether a client waits to be accepted."""
    readable, _, _ = select.select([listener], [], [], 0)
    return bool(readable)


def _pythonpath(env: Any) -> list[str]:
    return [p for p in str(env.get("PYTHONPATH", "")).split(os.pathsep) if p]


def _watched_files(previous: dict[str, int] | None = None) -> dict[str, int]:
    """
    The modification times that say the server's code is current: the provider's loaded modules
    and the folders of the interpreter's packages (an install or upgrade changes them).

    :param previous: the set to check again (its keys); None: collect it.
    """
    if previous is not None:
        now: dict[str, int] = {}
        for path in previous:
            try:
                now[path] = os.stat(path).st_mtime_ns
            except OSError:
                now[path] = -1
        return now
    package = str(Path(__file__).resolve().parents[1])
    paths = {
        module.__file__
        for name, module in list(sys.modules.items())
        if name.startswith("airflow_ml_provider") and getattr(module, "__file__", None)
    }
    paths |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)}
    paths.add(package)
    return _watched_files(dict.fromkeys(sorted(str(p) for p in paths), 0))


class _ClientLeft(ValueError):
    """The client closed its connection without a request."""


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """Read one request line and the descriptors sent with it."""
    conn.settimeout(10.0)
    data = b""
    fds: list[int] = []
    while not data.endswith(b"\n"):
        chunk, got, _, _ = socket.recv_fds(conn, 65536, 4)
        fds.extend(got)
        if not chunk:
            raise _ClientLeft("the client closed the connection before its request ended")
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            raise ValueError("request too large")
    conn.settimeout(None)
    request = json.loads(data)
    if not isinstance(request, dict):
        raise ValueError("the request is not a JSON object")
    return request, fds


def _send(conn: socket.socket, message: dict[str, Any]) -> bool:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        return False
    return True


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _step_name(argv: list[str]) -> str:
    return next((a for a in argv if not a.startswith("-")), "?")


def main(argv: list[str] | None = None) -> int:
    """Start a server: ``--socket PATH [--idle-seconds N]``; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m airflow_ml_provider.ml.warm")
    parser.add_argument("--socket", required=True, help="the Unix socket to listen on")
    parser.add_argument("--idle-seconds", type=float, default=600.0, help="exit after this long idle")
    parser.add_argument("--detach", action="store_true", help="once listening, go on in a detached child")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log.setLevel(logging.INFO)
    server = WarmServer(args.socket, args.idle_seconds)
    server.bind()
    if args.detach and os.fork() != 0:
        # The socket listens: the starter may connect now. The server lives on as nobody's child,
        # so that the task that started it neither waits for it nor takes it down with it.
        os._exit(0)
    pid_file = Path(args.socket).with_suffix(".pid")
    pid_file.write_text(str(os.getpid()))
    try:
        server.warm_up()
        return server.serve()
    finally:
        with contextlib.suppress(OSError):
            if pid_file.read_text() == str(os.getpid()):
                pid_file.unlink()


if __name__ == "__main__":
    sys.exit(main())
