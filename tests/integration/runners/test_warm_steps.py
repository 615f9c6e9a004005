"""The warm step server, for real: the step environment's interpreter, its server, forked children.

The runner behaviours a warm child shares with a new interpreter (streaming, timeouts, kill from a
thread or a signal handler, a killed task, left-over processes) are in test_python_runner.py, run
both ways. Here: what only the warm path has (isolation between steps, a crash, two tasks at
once, the fallback to a cold start, new code on disk, the idle exit).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.step_env import step_python
from support.warm import wait_until_warm

import airflow_ml_provider.ml.execute as execute_module
from airflow_ml_provider.exceptions import StepFailed
from airflow_ml_provider.runners import PythonRunner
from airflow_ml_provider.runners.warm import WARM_DIR_ENV, stop_servers

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def warm_server() -> None:
    """The step environment's server has done its imports (until then steps start cold)."""
    wait_until_warm(step_python())


@pytest.fixture
def short_dir() -> Any:
    """A servers' folder with a short path (pytest's temporary paths are too long for a socket)."""
    folder = Path(tempfile.mkdtemp(prefix="warm-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _runner(**kwargs: Any) -> PythonRunner:
    return PythonRunner(python=step_python(), warm=True, kill_grace_seconds=1, **kwargs)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _wait_until(condition: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_each_step_gets_a_fresh_child_of_a_server_that_imported_tensorflow(collected: Any) -> None:
    logger, handler = collected
    first = _runner().run("steps_for_tests:process_facts", {}, logger=logger)
    second = _runner().run("steps_for_tests:process_facts", {}, logger=logger)
    # Warm: TensorFlow was loaded before the step began, by the server both children came from.
    assert first["tensorflow_loaded"] and second["tensorflow_loaded"]
    assert first["ppid"] == second["ppid"] and first["pid"] != second["pid"]
    assert not _alive(first["pid"]) and _alive(first["ppid"])
    # Each child draws its own random numbers, as a new interpreter would.
    assert first["numpy_draw"] != second["numpy_draw"]
    said = [m for m in handler.messages if m.startswith("Running step steps_for_tests:process_facts")]
    assert len(said) == 2 and all(f"with {step_python()} (warm: child " in m for m in said), said
    assert not [m for m in handler.messages if "cold" in m]


def test_a_step_that_leaks_state_and_memory_leaves_nothing_to_the_next() -> None:
    leaker = _runner().run("steps_for_tests:leak_state", {"megabytes": 300})
    assert leaker["leaked_env"] == "leaked" and leaker["leaked_attribute"] == "leaked"
    after = _runner().run("steps_for_tests:process_facts", {})
    assert after["ppid"] == leaker["ppid"]  # the same server
    assert after["leaked_env"] is None and after["leaked_attribute"] is None
    # The 300 MB went with the leaking child; the server did not grow by them.
    assert after["parent_rss_kb"] < leaker["parent_rss_kb"] + 100 * 1024
    assert not hasattr(execute_module, "_warm_test_leak")  # nor did anything reach this process


def test_a_step_that_segfaults_fails_its_task_only(collected: Any) -> None:
    logger, _ = collected
    before = _runner().run("steps_for_tests:process_facts", {})
    with pytest.raises(StepFailed, match=r"killed by SIGSEGV") as err:
        _runner().run("steps_for_tests:segfault", {}, logger=logger)
    assert "steps_for_tests:segfault" in str(err.value)
    after = _runner().run("steps_for_tests:process_facts", {})
    assert after["ppid"] == before["ppid"]  # the server lives on and serves the next step


def test_two_tasks_run_their_steps_at_once(tmp_path: Path) -> None:
    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def task(me: str, partner: str) -> None:
        spec = {"mine": str(tmp_path / me), "partner": str(tmp_path / partner)}
        try:
            results[me] = _runner().run("steps_for_tests:meet", spec)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=task, args=pair) for pair in (("a", "b"), ("b", "a"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    # Each waited for the other's marker: they ran side by side, in two children of one server.
    assert results["a"]["ppid"] == results["b"]["ppid"]
    assert results["a"]["pid"] != results["b"]["pid"]


def test_a_folder_others_can_open_means_a_cold_start_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, collected: Any
) -> None:
    logger, handler = collected
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    monkeypatch.setenv(WARM_DIR_ENV, str(shared))
    facts = _runner().run("steps_for_tests:process_facts", {}, logger=logger)
    assert not facts["tensorflow_loaded"]  # a new interpreter ran it
    warnings = [m for m in handler.messages if "cold" in m]
    assert warnings == [
        f"Step steps_for_tests:process_facts starts in a new interpreter (cold): {shared} is not this "
        f"user's alone (owner {os.getuid()}, mode 755)"
    ]
    assert not list(shared.iterdir())  # no socket was made there


def test_a_server_that_cannot_start_means_a_cold_start(
    tmp_path: Path, short_dir: Path, monkeypatch: pytest.MonkeyPatch, collected: Any
) -> None:
    logger, handler = collected
    monkeypatch.setenv(WARM_DIR_ENV, str(short_dir))
    wrapper = tmp_path / "python"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$2" = airflow_ml_provider.ml.warm ]; then echo "no warm server in this image" >&2; exit 3; fi\n'
        f'exec {step_python()} "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    result = PythonRunner(python=str(wrapper), warm=True).run("echo", {"payload": 7}, logger=logger)
    assert result == {"payload": 7}
    warnings = [m for m in handler.messages if "cold" in m]
    assert len(warnings) == 1
    assert "the warm step server could not start (exit code 3): no warm server in this image" in warnings[0]


def test_new_code_on_disk_gets_a_new_server_and_an_idle_server_exits(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = short_dir
    monkeypatch.setenv(WARM_DIR_ENV, str(folder))
    try:
        wait_until_warm(step_python())
        old = _runner(warm_idle_seconds=2).run("steps_for_tests:process_facts", {})
        assert old["tensorflow_loaded"]
        # An upgrade (or an edit) of a module the server has loaded.
        source = Path(execute_module.__file__)
        now = time.time()
        os.utime(source, (now, now + 1))
        # The old server refuses the step and stops listening; a new one starts (this step: cold).
        between = _runner(warm_idle_seconds=2).run("steps_for_tests:process_facts", {})
        assert not between["tensorflow_loaded"]
        wait_until_warm(step_python())
        new = _runner(warm_idle_seconds=2).run("steps_for_tests:process_facts", {})
        assert new["ppid"] != old["ppid"] and new["tensorflow_loaded"]
        assert _wait_until(lambda: not _alive(old["ppid"]), 60), "the stale server did not exit"
        # Two seconds without a step: the new server exits too, and takes its socket with it.
        assert _wait_until(lambda: not _alive(new["ppid"]), 60), "the idle server did not exit"
        assert not list(folder.glob("*.sock")) and not list(folder.glob("*.pid"))
    finally:
        stop_servers(folder)
