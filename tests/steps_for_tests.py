"""User-style steps (``module:function``) that the tests run through the operators."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def fail_once(spec: dict[str, Any]) -> dict[str, Any]:
    """Fail on the first call (leaving a marker file), succeed on the next."""
    marker = Path(spec["marker"])
    if not marker.exists():
        marker.write_text("failed once")
        raise RuntimeError(f"first try fails on purpose ({marker})")
    return {"mlflow": {"metrics": {"recovered": 1.0}}, "attempt": 2}


def always_fail(spec: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError(spec.get("message", "this step always fails"))


# -- the MLflow outage test (tests/integration/test_mlflow_outage.py) ----------------------------
# dag.test() runs steps and callbacks in the test's own process, so they share this module.
OUTAGE: dict[str, Any] = {}


def stop_mlflow_once(spec: dict[str, Any]) -> dict[str, Any]:
    """On the first try, stop the MLflow server in the middle of the task, then return a result."""
    marker = Path(spec["marker"])
    if not marker.exists():
        marker.write_text("stopped the server")
        OUTAGE["server"].stop()
        OUTAGE["stopped_at"] = time.monotonic()
    return {"payload": 1, "mlflow": {"metrics": {"after_outage": 1.0}}}


def restart_mlflow(context: Any) -> None:
    """on_retry_callback: the task gave up on the dead server; bring it back before the retry."""
    OUTAGE["failed_at"] = time.monotonic()
    OUTAGE["server"].start()


# -- the crash tests on a real cluster (tests/integration/test_reliability_cluster.py) ----------
PAUSE_DIR_ENV = "ML_TEST_PAUSE_DIR"
CRASH_DAG_ID = "reliability_crash"


def pause_marker(root: str | Path, run_id: str, point: str) -> Path:
    return Path(root, run_id.replace(":", "_").replace("+", "_"), point)


def pause_once(point: str) -> None:
    """
    In a ``reliability_crash`` DAG run, the first time ``point`` is reached: leave a marker (with
    this process's pid) and wait to be killed. Later tries find the marker and go on.

    Anywhere else (no ``ML_TEST_PAUSE_DIR``, another DAG) it does nothing.
    """
    root = os.environ.get(PAUSE_DIR_ENV)
    if not root or os.environ.get("AIRFLOW_CTX_DAG_ID") != CRASH_DAG_ID:
        return
    marker = pause_marker(root, os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", "unknown"), point)
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"pid": os.getpid(), "at": time.time()}))
    time.sleep(600)
    raise RuntimeError(f"pause_once({point!r}): nobody killed this process within 600 s")


def install_step_pause_points() -> None:
    """
    Wrap the two pause points inside steps with ``pause_once``: validation with its artifacts staged
    but not published, evaluation with its outputs staged. Installed in the step interpreter by
    tests/cluster_dags/step_site/sitecustomize.py.
    """
    from airflow_ml_provider.ml.evaluation import step as evaluation_step
    from airflow_ml_provider.ml.validation.io import StagedOutput

    if getattr(StagedOutput.commit, "_paused", False):
        return
    commit = StagedOutput.commit

    def paused_commit(self: Any, *args: Any, **kwargs: Any) -> None:
        pause_once("validate")  # everything staged in the hidden folder, nothing published
        commit(self, *args, **kwargs)

    write_outputs = evaluation_step._write_outputs

    def paused_write_outputs(*args: Any, **kwargs: Any) -> Any:
        written = write_outputs(*args, **kwargs)
        pause_once("evaluate")  # outputs written to staging, not yet moved into place
        return written

    paused_commit._paused = True  # type: ignore[attr-defined]
    StagedOutput.commit = paused_commit  # type: ignore[method-assign]
    evaluation_step._write_outputs = paused_write_outputs


def pausing_run_fn(ctx: Any) -> Any:
    """The demo ``run_fn``; the chief then pauses once: trained, not yet exported or logged."""
    from airflow_ml_provider.ml.training.demo import run_fn

    model = run_fn(ctx)
    if ctx.is_chief:
        pause_once("train")
    return model


def succeed(spec: dict[str, Any]) -> dict[str, Any]:
    """A step that does nothing and succeeds."""
    return {"ok": True}


# -- the warm step server (tests/integration/runners/test_warm_steps.py) -------------------------


def process_facts(spec: dict[str, Any]) -> dict[str, Any]:
    """What this step's process looks like when it starts: pid, parent, what is loaded, what leaked."""
    import sys

    facts: dict[str, Any] = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "tensorflow_loaded": "tensorflow" in sys.modules,
        "leaked_env": os.environ.get("ML_WARM_TEST_LEAK"),
        "leaked_attribute": None,
        "parent_rss_kb": _rss_kb(os.getppid()),
    }
    execute = sys.modules.get("airflow_ml_provider.ml.execute")
    if execute is not None:
        facts["leaked_attribute"] = getattr(execute, "_warm_test_leak", None)
    if "numpy" in sys.modules:
        facts["numpy_draw"] = float(sys.modules["numpy"].random.random())
    return facts


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


_HELD: list[bytearray] = []


def leak_state(spec: dict[str, Any]) -> dict[str, Any]:
    """Leave state behind: an environment variable, a module attribute and memory that is never freed."""
    import airflow_ml_provider.ml.execute as execute

    os.environ["ML_WARM_TEST_LEAK"] = "leaked"
    execute._warm_test_leak = "leaked"  # type: ignore[attr-defined]
    _HELD.append(bytearray(int(spec.get("megabytes", 300)) * 1024 * 1024))
    return process_facts(spec)


def segfault(spec: dict[str, Any]) -> dict[str, Any]:
    """Crash the process the way a native library does."""
    import ctypes

    ctypes.string_at(0)
    return {}


def meet(spec: dict[str, Any]) -> dict[str, Any]:
    """Leave a marker, then wait for the partner's: both steps must run at the same time to end."""
    Path(spec["mine"]).write_text(str(os.getpid()))
    deadline = time.monotonic() + float(spec.get("within", 120))
    while not Path(spec["partner"]).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the partner step never ran beside this one ({spec['partner']})")
        time.sleep(0.05)
    return process_facts(spec)
