"""PythonRunner and the step CLI, with real child processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.log_capture import Collect
from support.warm import wait_until_warm

from airflow_ml_provider.exceptions import StepFailed, StepTimeout
from airflow_ml_provider.runners import PythonRunner
from airflow_ml_provider.runners import python as python_runner_module

pytestmark = pytest.mark.integration

USER_STEPS = '''
import os, subprocess, sys, time
from pathlib import Path


def spawn_and_sleep(spec):
    """Start a grandchild, record both pids, then sleep."""
    grandchild = subprocess.Popen(spec["grandchild"])
    Path(spec["pid_file"]).write_text(f"{os.getpid()} {grandchild.pid}")
    print("spawned", grandchild.pid, flush=True)
    time.sleep(300)
    return {}


def spawn_and_return(spec):
    """Leave a grandchild behind that holds the output pipe."""
    grandchild = subprocess.Popen(["sleep", "300"])
    Path(spec["pid_file"]).write_text(str(grandchild.pid))
    return {"left": grandchild.pid}


def exit_without_result(spec):
    os._exit(0)


def environment(spec):
    return {name: os.environ.get(name) for name in spec["names"]}


def print_stdout(spec):
    print("from stdout", flush=True)
    sys.stderr.write("from stderr\\n")
    return {"ok": True}
'''


@pytest.fixture
def user_steps(tmp_path: Path) -> dict[str, str]:
    """A user step module in a directory of its own; returns the env that puts it on PYTHONPATH."""
    steps_dir = tmp_path / "user_steps"
    steps_dir.mkdir()
    (steps_dir / "runner_user_steps.py").write_text(textwrap.dedent(USER_STEPS))
    return {"PYTHONPATH": str(steps_dir)}


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (this container's init may not reap them)."""
    stat = Path(f"/proc/{pid}/stat")
    if not Path("/proc").is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        return stat.read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _wait_gone(pids: list[int], within: float = 5.0) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    return [pid for pid in pids if _alive(pid)]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airflow_ml_provider.ml", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


# --- PythonRunner -------------------------------------------------------------------------------


@pytest.fixture(params=[False, True], ids=["cold", "warm"])
def warm(request: pytest.FixtureRequest) -> bool:
    """The behaviours below hold alike for a new interpreter and a child of the warm step server."""
    if request.param:
        wait_until_warm(sys.executable)
    return bool(request.param)


@pytest.mark.parametrize("payload", [{"a": [1, 2.5, None, "x"]}, "text", None])
def test_echo_round_trip(payload: Any) -> None:
    assert PythonRunner().run("echo", {"payload": payload}) == {"payload": payload}


def test_interpreter_without_the_package_gets_it_on_pythonpath(
    tmp_path: Path, collected: tuple[logging.Logger, Collect]
) -> None:
    """The virtualenv's base interpreter does not have the package: the runner adds it to PYTHONPATH."""
    base = getattr(sys, "_base_executable", "")
    if not base or not os.access(base, os.X_OK):
        pytest.skip("no base interpreter next to the virtualenv")
    probe = subprocess.run([base, "-c", "import airflow_ml_provider"], capture_output=True, cwd=tmp_path)
    if probe.returncode == 0:
        pytest.skip(f"{base} has airflow_ml_provider installed")
    logger, _ = collected
    runner = PythonRunner(python=base, cwd=str(tmp_path))
    assert runner.run("echo", {"payload": 42}, logger=logger) == {"payload": 42}


def test_log_lines_stream_while_the_child_runs(collected: tuple[logging.Logger, Collect], warm: bool) -> None:
    logger, handler = collected
    spec = {"log_lines": ["marker one", "marker two"], "sleep_seconds": 2, "payload": "done"}
    assert PythonRunner(warm=warm).run("echo", spec, logger=logger) == {"payload": "done"}
    returned = time.monotonic()
    arrived = {msg: at for at, msg in handler.records}
    key = "[step echo] INFO airflow_ml_provider.ml.basic: marker one"
    assert key in arrived, handler.messages
    assert "[step echo] INFO airflow_ml_provider.ml.basic: marker two" in arrived
    # The line was logged by the parent while the child still slept for 2 s.
    assert returned - arrived[key] > 1.5
    assert any("(warm: child " in message for message in handler.messages) == warm


def test_stdout_and_stderr_are_both_streamed(
    collected: tuple[logging.Logger, Collect], user_steps: dict[str, str], warm: bool
) -> None:
    logger, handler = collected
    result = PythonRunner(env=user_steps, warm=warm).run("runner_user_steps:print_stdout", {}, logger=logger)
    assert result == {"ok": True}
    assert "[step runner_user_steps:print_stdout] from stdout" in handler.messages
    assert "[step runner_user_steps:print_stdout] from stderr" in handler.messages


def test_env_reaches_the_child_without_touching_os_environ(user_steps: dict[str, str], warm: bool) -> None:
    before = dict(os.environ)
    env = {**user_steps, "ML_RUNNER_TEST_VAR": "value"}
    spec = {"names": ["ML_RUNNER_TEST_VAR", "PYTHONUNBUFFERED"]}
    result = PythonRunner(env=env, warm=warm).run("runner_user_steps:environment", spec)
    assert result == {"ML_RUNNER_TEST_VAR": "value", "PYTHONUNBUFFERED": "1"}
    assert dict(os.environ) == before


def test_failure_raises_step_failed_with_last_lines(
    collected: tuple[logging.Logger, Collect], warm: bool
) -> None:
    logger, _ = collected
    with pytest.raises(StepFailed) as err:
        PythonRunner(warm=warm).run("echo", {"fail_with": "boom-4711"}, logger=logger)
    assert not isinstance(err.value, StepTimeout)
    message = str(err.value)
    assert "Step 'echo' failed" in message and sys.executable in message and "exit code 1" in message
    assert "boom-4711" in message
    assert err.value.returncode == 1
    assert any("RuntimeError: boom-4711" in line for line in err.value.last_lines)
    assert len(err.value.last_lines) <= 20


def test_exit_without_result_raises_step_failed_naming_the_file(
    user_steps: dict[str, str], warm: bool
) -> None:
    with pytest.raises(StepFailed, match=r"exited with code 0 but wrote no result file .*result\.json"):
        PythonRunner(env=user_steps, warm=warm).run("runner_user_steps:exit_without_result", {})


@pytest.mark.parametrize(
    "grandchild",
    [["sleep", "300"], ["sh", "-c", "trap '' TERM; exec sleep 300"]],
    ids=["sleep", "ignores-sigterm"],
)
def test_timeout_kills_child_and_grandchild(
    tmp_path: Path, user_steps: dict[str, str], grandchild: list[str], warm: bool
) -> None:
    pid_file = tmp_path / "pids"
    runner = PythonRunner(timeout=3, env=user_steps, kill_grace_seconds=1, warm=warm)
    spec = {"grandchild": grandchild, "pid_file": str(pid_file)}
    started = time.monotonic()
    with pytest.raises(
        StepTimeout, match=r"'runner_user_steps:spawn_and_sleep' ran past its timeout of 3s"
    ) as err:
        runner.run("runner_user_steps:spawn_and_sleep", spec)
    assert time.monotonic() - started < 10
    pids = [int(pid) for pid in pid_file.read_text().split()]
    assert _wait_gone(pids) == []
    assert any("spawned" in line for line in err.value.last_lines)


class Interrupted(BaseException):
    """Stands for KeyboardInterrupt or Airflow's task timeout arriving while the step runs."""


def test_interrupt_kills_the_process_group(tmp_path: Path, user_steps: dict[str, str], warm: bool) -> None:
    pid_file = tmp_path / "pids"
    spec = {"grandchild": ["sleep", "300"], "pid_file": str(pid_file)}

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted()

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.5)
    try:
        with pytest.raises(Interrupted):
            PythonRunner(env=user_steps, kill_grace_seconds=1, warm=warm).run(
                "runner_user_steps:spawn_and_sleep", spec
            )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    pids = [int(pid) for pid in pid_file.read_text().split()]
    assert _wait_gone(pids) == []


def test_a_step_stops_when_the_process_that_started_it_is_killed(
    tmp_path: Path, user_steps: dict[str, str], warm: bool
) -> None:
    """SIGKILL leaves the runner no chance to clean up: the step notices its parent is gone and stops."""
    pid_file = tmp_path / "pids"
    spec = {"grandchild": ["sleep", "300"], "pid_file": str(pid_file)}
    parent = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys; from airflow_ml_provider.runners import PythonRunner; "
            f"PythonRunner(env={user_steps!r}, warm={warm!r})"
            f".run('runner_user_steps:spawn_and_sleep', {spec!r})"
        )],
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = [int(pid) for pid in pid_file.read_text().split()]
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    assert _wait_gone(pids, within=5.0) == []  # the step and its grandchild


@pytest.mark.parametrize("caller", ["thread", "signal-handler"])
def test_kill_stops_the_step(caller: str, warm: bool) -> None:
    """kill() from another thread, or from a signal handler in this thread as Airflow's on_kill."""
    runner = PythonRunner(kill_grace_seconds=1, warm=warm)
    if caller == "thread":
        killer = threading.Timer(1.0, runner.kill)
    else:
        previous = signal.signal(signal.SIGUSR1, lambda signum, frame: runner.kill())
        killer = threading.Timer(1.0, os.kill, args=(os.getpid(), signal.SIGUSR1))
    killer.start()
    started = time.monotonic()
    try:
        with pytest.raises(StepFailed, match=r"killed by SIGTERM\) \(killed by PythonRunner.kill\(\)\)"):
            runner.run("echo", {"sleep_seconds": 60})
    finally:
        killer.cancel()
        if caller != "thread":
            signal.signal(signal.SIGUSR1, previous)
    assert time.monotonic() - started < 10


def test_processes_left_behind_holding_the_output_are_killed(
    tmp_path: Path, user_steps: dict[str, str], monkeypatch: pytest.MonkeyPatch, warm: bool
) -> None:
    monkeypatch.setattr(python_runner_module, "DRAIN_SECONDS", 0.5)
    pid_file = tmp_path / "pid"
    runner = PythonRunner(env=user_steps, kill_grace_seconds=1, warm=warm)
    result = runner.run("runner_user_steps:spawn_and_return", {"pid_file": str(pid_file)})
    assert result == {"left": int(pid_file.read_text())}
    assert _wait_gone([result["left"]]) == []


def test_missing_interpreter_gives_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "env" / "bin" / "python"
    runner = PythonRunner(python=str(missing))  # checked when the step runs, not before
    with pytest.raises(FileNotFoundError, match=f"Python interpreter '{missing}' does not exist"):
        runner.run("echo", {})


def test_non_executable_interpreter_gives_a_clear_error(tmp_path: Path) -> None:
    not_executable = tmp_path / "python"
    not_executable.write_text("")
    with pytest.raises(PermissionError, match=f"'{not_executable}' is not executable"):
        PythonRunner(python=str(not_executable)).run("echo", {})


def test_non_json_spec_is_refused_before_starting() -> None:
    with pytest.raises(TypeError, match=r"spec\['payload'\] is not"):
        PythonRunner().run("echo", {"payload": object()})


# --- The CLI ------------------------------------------------------------------------------------


def test_cli_ok_writes_the_result(tmp_path: Path) -> None:
    spec, result = tmp_path / "spec.json", tmp_path / "result.json"
    spec.write_text(json.dumps({"payload": {"x": 1}, "log_lines": ["hello"]}))
    done = _cli("echo", "--spec", str(spec), "--result", str(result))
    assert done.returncode == 0, done.stderr
    assert json.loads(result.read_text()) == {"payload": {"x": 1}}
    assert "INFO airflow_ml_provider.ml.basic: hello\n" in done.stderr
    assert not (tmp_path / "result.json.tmp").exists()


def test_cli_failure_exits_1_and_leaves_no_result(tmp_path: Path) -> None:
    spec, result = tmp_path / "spec.json", tmp_path / "result.json"
    spec.write_text(json.dumps({"fail_with": "cli-boom"}))
    result.write_text('{"stale": true}')
    done = _cli("echo", "--spec", str(spec), "--result", str(result))
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "RuntimeError: cli-boom" in done.stderr
    assert not result.exists()
    assert not (tmp_path / "result.json.tmp").exists()


@pytest.mark.parametrize(
    ("step", "spec_text", "expected"),
    [
        ("echo", None, "cannot read the spec file"),
        ("echo", "{not json", "is not valid JSON"),
        ("echo", "[1, 2]", "must hold a JSON object"),
        ("no_such_step", "{}", "Unknown step 'no_such_step'"),
        ("no_such_pkg.mod:func", "{}", "step 'no_such_pkg.mod:func' does not resolve in"),
        ("airflow_ml_provider.ml.basic:no_such_func", "{}", "defines no 'no_such_func' at its top level"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(
    tmp_path: Path, step: str, spec_text: str | None, expected: str
) -> None:
    spec, result = tmp_path / "spec.json", tmp_path / "result.json"
    if spec_text is not None:
        spec.write_text(spec_text)
    done = _cli(step, "--spec", str(spec), "--result", str(result))
    assert done.returncode == 2
    assert expected in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not result.exists()
    if step == "echo":
        assert str(spec) in done.stderr


def test_cli_without_step_exits_2() -> None:
    assert _cli().returncode == 2


def test_cli_list_prints_builtin_steps() -> None:
    from airflow_ml_provider.ml.registry import BUILTIN_STEPS

    done = _cli("--list")
    assert done.returncode == 0
    assert done.stdout.splitlines() == sorted(BUILTIN_STEPS)
