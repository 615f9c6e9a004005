"""GangRunner with real worker processes: TF_CONFIG per worker, prefixed logs, fail-fast, no leftovers."""

from __future__ import annotations

import json
import logging
import os
import textwrap
import time
from pathlib import Path

import pytest

from airflow_ml_provider.exceptions import StepFailed
from airflow_ml_provider.ml.training.cluster import local_cluster, worker_environments
from airflow_ml_provider.runners.gang import GangRunner

pytestmark = pytest.mark.integration

GANG_STEPS = """
    import json, logging, os, time
    from pathlib import Path

    log = logging.getLogger("gang")

    def work(spec):
        index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        Path(spec["pids"], str(index)).write_text(str(os.getpid()))
        log.info("worker %s up", index)
        if index in spec.get("fail", []):
            time.sleep(spec.get("fail_after", 0.2))
            log.info("worker %s about to fail", index)
            raise RuntimeError(f"worker {index} broke")
        time.sleep(spec.get("sleep", 0))
        return {"index": index}

    def always_restart(spec):
        from airflow_ml_provider.ml.exit_codes import GangRestart

        raise GangRestart("never gets better")

    def die_once(spec):
        # Worker spec["worker"] fails the first time (spec["how"]: signal, restart or error), then works.
        import signal
        from airflow_ml_provider.ml.exit_codes import GangRestart

        index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
        with Path(spec["dir"], f"tf_config-{index}").open("a") as out:
            print(os.environ["TF_CONFIG"], file=out)
        marker = Path(spec["dir"], "died")
        if index == spec["worker"] and not marker.exists():
            marker.write_text(str(os.getpid()))
            if spec["how"] == "signal":
                os.kill(os.getpid(), signal.SIGKILL)
            if spec["how"] == "restart":
                raise GangRestart("the peer went away")
            raise RuntimeError("a bug in the code")
        time.sleep(spec.get("sleep", 0))
        return {"index": index}
"""


@pytest.fixture
def gang_env(tmp_path: Path) -> dict[str, str]:
    steps = tmp_path / "gang_steps"
    steps.mkdir()
    (steps / "gang_user_steps.py").write_text(textwrap.dedent(GANG_STEPS))
    return {"PYTHONPATH": str(steps)}


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def collected() -> tuple[logging.Logger, Lines]:
    logger = logging.getLogger(f"gang-test-{time.monotonic_ns()}")
    logger.setLevel(logging.INFO)
    handler = Lines()
    logger.addHandler(handler)
    return logger, handler


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_every_worker_gets_its_own_tf_config_and_prefixed_log(tmp_path, gang_env, collected):
    logger, lines = collected
    cluster = local_cluster(3)
    gang = GangRunner(worker_environments(cluster), env=gang_env)
    results = gang.run_all("gang_user_steps:work", {"pids": str(tmp_path)}, logger=logger)
    assert results == [{"index": 0}, {"index": 1}, {"index": 2}]
    for i in range(3):
        assert any(line.startswith(f"[worker {i}]") and f"worker {i} up" in line for line in lines.lines)


def test_a_dying_worker_stops_the_gang_within_seconds(tmp_path, gang_env, collected):
    logger, _ = collected
    gang = GangRunner(worker_environments(local_cluster(3)), env=gang_env)
    started = time.monotonic()
    with pytest.raises(StepFailed) as info:
        gang.run("gang_user_steps:work", {"pids": str(tmp_path), "fail": [1], "sleep": 120}, logger=logger)
    elapsed = time.monotonic() - started
    assert elapsed < 30, f"took {elapsed:.1f}s to notice the dead worker"
    message = str(info.value)
    assert "Worker 1 of 3 failed" in message and "worker 1 broke" in message
    assert any("worker 1 broke" in line for line in info.value.last_lines)  # its own last lines
    pids = [int(p.read_text()) for p in tmp_path.iterdir() if p.name.isdigit()]
    assert len(pids) == 3
    assert not [pid for pid in pids if _alive(pid)], "a worker was left running"


def test_kill_stops_every_worker(tmp_path, gang_env, collected):
    import threading

    logger, _ = collected
    gang = GangRunner(worker_environments(local_cluster(2)), env=gang_env)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            gang.run("gang_user_steps:work", {"pids": str(tmp_path), "sleep": 120}, logger=logger)
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while len([p for p in tmp_path.iterdir() if p.name.isdigit()]) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    gang.kill()
    thread.join(60)
    assert not thread.is_alive() and outcome and isinstance(outcome[0], StepFailed)
    pids = [int(p.read_text()) for p in tmp_path.iterdir() if p.name.isdigit()]
    assert not [pid for pid in pids if _alive(pid)]


def test_empty_gang_is_refused():
    with pytest.raises(ValueError, match="at least one worker"):
        GangRunner([])


def test_tf_config_is_what_the_workers_see(tmp_path, gang_env):
    cluster = local_cluster(2)
    envs = worker_environments(cluster)
    assert [json.loads(e["TF_CONFIG"])["task"]["index"] for e in envs] == [0, 1]
    assert os.environ.get("TF_CONFIG") is None  # nothing leaks into this process


def _addresses(folder: Path, index: int) -> list[list[str]]:
    lines = (folder / f"tf_config-{index}").read_text().splitlines()
    return [json.loads(line)["cluster"]["worker"] for line in lines]


@pytest.mark.parametrize(("how", "code"), [("signal", "-9"), ("restart", "75")])
def test_a_transient_failure_restarts_the_whole_gang_with_fresh_ports(
    tmp_path, gang_env, collected, how, code
):
    logger, lines = collected
    gang = GangRunner(worker_environments(local_cluster(2)), env=gang_env, restarts=2)
    spec = {"dir": str(tmp_path), "worker": 1, "how": how}
    assert gang.run_all("gang_user_steps:die_once", spec, logger=logger) == [{"index": 0}, {"index": 1}]
    warnings = [line for line in lines.lines if line.startswith("Worker ")]
    assert warnings == [
        f"Worker 1 of 2 failed (exit code {code}{', killed by SIGKILL' if how == 'signal' else ''}): "
        "the gang restarts from its last checkpoint (restart 1 of 2)"
    ]
    first, second = _addresses(tmp_path, 1)
    assert first != second  # fresh TF_CONFIG ports: the old ones may still be held
    assert _addresses(tmp_path, 0)[-1] == second


def test_a_restart_names_the_lost_peer_in_one_line(tmp_path, gang_env, collected):
    logger, lines = collected
    gang = GangRunner(worker_environments(local_cluster(2)), env=gang_env, restarts=1)
    gang.run_all(
        "gang_user_steps:die_once", {"dir": str(tmp_path), "worker": 0, "how": "restart"}, logger=logger
    )
    said = [line for line in lines.lines if "error: step gang_user_steps:die_once" in line]
    assert said == [
        "[worker 0] [step gang_user_steps:die_once] error: step gang_user_steps:die_once asked for a gang "
        "restart (GangRestart: the peer went away); the gang restarts from its last checkpoint"
    ]


@pytest.mark.parametrize(("how", "restarts"), [("error", 2), ("signal", 0)])
def test_an_application_error_or_no_restarts_left_stops_the_gang_at_once(
    tmp_path, gang_env, collected, how, restarts
):
    logger, lines = collected
    gang = GangRunner(worker_environments(local_cluster(2)), env=gang_env, restarts=restarts)
    spec = {"dir": str(tmp_path), "worker": 1, "how": how, "sleep": 120}
    started = time.monotonic()
    with pytest.raises(StepFailed, match="Worker 1 of 2 failed, so the gang was stopped: ") as info:
        gang.run_all("gang_user_steps:die_once", spec, logger=logger)
    assert time.monotonic() - started < 30
    assert info.value.returncode == (1 if how == "error" else -9)
    assert not [line for line in lines.lines if "restarts" in line]
    assert len(_addresses(tmp_path, 1)) == 1  # started once


def test_restarts_run_out(tmp_path, gang_env, collected):
    logger, _ = collected
    calls: list[int] = []

    def envs() -> list[dict[str, str]]:  # a callable: the environments of each run of the gang
        calls.append(1)
        return worker_environments(local_cluster(2))

    gang = GangRunner(envs, env=gang_env, restarts=1)
    with pytest.raises(StepFailed, match=r"failed, so the gang was stopped \(after 1 restart\): ") as info:
        gang.run_all("gang_user_steps:always_restart", {}, logger=logger)
    assert info.value.returncode == 75
    assert len(calls) == 2


def test_restarts_must_be_a_count():
    with pytest.raises(ValueError, match="restarts must be an int >= 0, got -1"):
        GangRunner([{}], restarts=-1)


# A real MultiWorkerMirroredStrategy gang runs in tests/integration/operators/test_training_local.py
# and tests/integration/runners/test_pod_entrypoint.py.
