"""Start steps in children of a warm step server (:mod:`airflow_ml_provider.ml.warm`), the client side.

The server of an interpreter is found by a Unix socket in a folder of this user's
(``$TMPDIR/airflow-ml-warm-<uid>``, or ``AIRFLOW_ML_WARM_DIR``), named after the interpreter, the
provider's version and the environment variables its imports read. The first task that finds no
server starts one (a detached process that outlives the task, and exits when idle) under a file
lock, so that tasks starting together share one. Anything that keeps the warm path from working
raises :class:`WarmUnavailable`; the runner then starts the step the cold way, and says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow_ml_provider import __version__
from airflow_ml_provider.ml.warm import import_environment

WARM_DIR_ENV = "AIRFLOW_ML_WARM_DIR"
# The server binds its socket before it imports anything heavy: this is only its interpreter's start.
BIND_SECONDS = 60.0
# How long a step may wait for the server to take it: its imports (10-30 s, more on a busy machine).
READY_SECONDS = 300.0
# The variables of the task's environment that the server process itself keeps.
_SERVER_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ")
_MAX_SOCKET_PATH = 100


class WarmUnavailable(Exception):
    """The warm path cannot run this step (the message says why); the step starts cold instead."""


class WarmStarting(WarmUnavailable):
    """The server is starting, or still importing: this step starts cold, the next ones warm."""


def warm_dir() -> Path:
    """The folder of this user's servers: created 0700, refused when someone else could use it."""
    folder = Path(
        os.environ.get(WARM_DIR_ENV) or Path(tempfile.gettempdir(), f"airflow-ml-warm-{os.getuid()}")
    )
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError as err:
        raise WarmUnavailable(f"cannot create {folder} ({err.strerror})") from err
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise WarmUnavailable(
            f"{folder} is not this user's alone (owner {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o})"
        )
    return folder


def server_key(python: str, env: dict[str, str]) -> str:
    """What makes two steps share a server: interpreter, provider version, import environment."""
    identity = [os.path.abspath(python), __version__, import_environment(env)]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def server_ready(python: str, env: dict[str, str] | None = None) -> bool:
    """
    Whether the warm server of ``python`` has done its imports (its steps then start warm).

    :param python: the step interpreter.
    :param env: the steps' environment (default this process's): its import variables pick the server.
    """
    return (warm_dir() / f"{server_key(python, dict(os.environ) if env is None else env)}.ready").exists()


class WarmStep:
    """
    A step running in a child of the server.

    :param conn: the connection to the server (it reports the child's end there).
    :param pid: the child's pid, leader of its own process group.
    :param output: the read end of the child's stdout and stderr.
    :param log_file: the server's log.
    """

    def __init__(self, conn: socket.socket, pid: int, output: int, log_file: Path) -> None:
        self.conn = conn
        self.pid = pid
        self.output = output
        self.log_file = log_file
        self._buffer = b""

    def wait(self, timeout: float | None) -> int:
        """
        The child's exit status (negative: the signal that killed it).

        :raises TimeoutError: still running after ``timeout`` seconds.
        :raises ConnectionError: the server ended before the child did.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._next_message(deadline)
            if "exit" in message:
                return int(message["exit"])

    def _next_message(self, deadline: float | None) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError
            # Short slices: a signal handler (Airflow's on_kill) runs between them.
            slice_ = 1.0 if deadline is None else max(0.01, min(1.0, deadline - time.monotonic()))
            self.conn.settimeout(slice_)
            try:
                chunk = self.conn.recv(4096)
            except TimeoutError:
                continue
            except OSError as err:
                raise ConnectionError(f"lost the warm step server ({err})") from err
            if not chunk:
                raise ConnectionError(
                    f"the warm step server ended before the step did (its log: {self.log_file})"
                )
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message = json.loads(line)
        return message if isinstance(message, dict) else {}

    def close(self) -> None:
        """Close the connection (the server kills the child if it still runs)."""
        self.conn.close()


def start_step(
    python: str,
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str | None,
    idle_seconds: float,
    server_pythonpath: Callable[[], str] = str,
) -> WarmStep:
    """
    Run ``python -m airflow_ml_provider.ml ARGV`` in a child of the interpreter's warm server.

    :param python: the step interpreter (checked).
    :param argv: the entrypoint's arguments.
    :param env: the child's complete environment.
    :param cwd: the child's working folder (default this process's).
    :param idle_seconds: a server started now exits after this long without a step.
    :param server_pythonpath: gives ``PYTHONPATH`` of a server started now (where it finds this
        package); called only then.
    :raises WarmUnavailable: no server can take the step; start it cold.
    """
    folder = warm_dir()
    key = server_key(python, env)
    socket_path = str(folder / f"{key}.sock")
    if len(socket_path) > _MAX_SOCKET_PATH:
        raise WarmUnavailable(
            f"the socket path {socket_path} is too long for a Unix socket; set {WARM_DIR_ENV}"
        )
    log_file = folder / f"{key}.log"
    request = {"argv": argv, "env": env, "cwd": cwd or os.getcwd(), "client": os.getpid()}
    payload = json.dumps(request).encode() + b"\n"
    for attempt in range(2):
        conn = _connect_or_start(python, socket_path, log_file, env, idle_seconds, server_pythonpath)
        read_fd, write_fd = os.pipe()
        try:
            socket.send_fds(conn, [payload], [write_fd])
            os.close(write_fd)
            write_fd = -1
            reply = WarmStep(conn, 0, read_fd, log_file)._next_message(time.monotonic() + READY_SECONDS)
        except (OSError, ValueError, TimeoutError) as err:
            conn.close()
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
            raise WarmUnavailable(
                f"the warm step server did not take the step ({err}; its log: {log_file})"
            ) from err
        if "pid" in reply:
            step = WarmStep(conn, int(reply["pid"]), read_fd, log_file)
            step._buffer = b""
            return step
        conn.close()
        os.close(read_fd)
        if reply.get("refused") in ("stale", "stopping") and attempt == 0:
            continue  # that server saw new code on disk, or idled out, and stopped listening
        raise WarmUnavailable(f"the warm step server refused the step ({reply.get('refused', reply)})")
    raise WarmUnavailable("the warm step server kept refusing the step")


def _connect(socket_path: str) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(socket_path)
    except OSError:
        conn.close()
        raise
    return conn


def _connect_or_start(
    python: str,
    socket_path: str,
    log_file: Path,
    env: dict[str, str],
    idle_seconds: float,
    pythonpath: Callable[[], str],
) -> socket.socket:
    """
    Connect to the server once it is warm.

    :raises WarmStarting: there was none (it is started now) or it still imports: the step should
        not wait for imports it may not need, so it starts cold as it would without a server.
    """
    ready = Path(socket_path).with_suffix(".ready")
    with contextlib.suppress(FileNotFoundError, ConnectionRefusedError):
        conn = _connect(socket_path)
        if ready.exists():
            return conn
        conn.close()
        raise WarmStarting("its warm step server is still importing")
    lock_path = socket_path.removesuffix(".sock") + ".lock"
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with contextlib.suppress(FileNotFoundError, ConnectionRefusedError):
                conn = _connect(socket_path)  # another task started it meanwhile
                if ready.exists():
                    return conn
                conn.close()
                raise WarmStarting("its warm step server is still importing")
            server = _start_server(python, socket_path, log_file, env, idle_seconds, pythonpath())
            try:  # it returns once its socket listens, leaving the server to a detached child
                returncode = server.wait(BIND_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, signal.SIGKILL)
                server.wait()
                raise WarmUnavailable(
                    f"the warm step server did not listen within {BIND_SECONDS:.0f} s"
                ) from None
            if returncode != 0:
                raise WarmUnavailable(
                    f"the warm step server could not start (exit code {returncode}): "
                    f"{_last_line(log_file)} (its log: {log_file})"
                )
            raise WarmStarting("its warm step server starts now, for the steps after this one")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _start_server(
    python: str, socket_path: str, log_file: Path, env: dict[str, str], idle_seconds: float, pythonpath: str
) -> subprocess.Popen[bytes]:
    server_env = {key: env[key] for key in _SERVER_ENV if key in env}
    server_env.update(import_environment(env))
    if pythonpath:
        server_env["PYTHONPATH"] = pythonpath
    cmd = [
        python,
        "-m",
        "airflow_ml_provider.ml.warm",
        "--socket",
        socket_path,
        "--idle-seconds",
        str(idle_seconds),
        "--detach",
    ]
    with open(log_file, "wb") as out:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=server_env, cwd="/", start_new_session=True, close_fds=True,
        )  # fmt: skip


def _last_line(log_file: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()[:300]
    return "no output"


def stop_servers(folder: str | Path | None = None) -> list[int]:
    """
    Stop this user's warm step servers (SIGTERM: their running steps are killed); return their pids.

    Not needed after an upgrade (a server that sees new code on disk stops by itself), but useful
    before removing a step environment, or at the end of a test session.

    :param folder: the servers' folder (default :func:`warm_dir`).
    """
    stopped = []
    for pid_file in Path(folder or warm_dir()).glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"airflow_ml_provider.ml.warm" in cmdline and pid_file.stem.encode() in cmdline:
                os.kill(pid, signal.SIGTERM)
                stopped.append(pid)
    return stopped
