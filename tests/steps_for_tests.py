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


# -- checkpoints and resume (tests/integration/ml/test_checkpoint_resume.py) ---------------------


def checkpointed_run_fn(ctx: Any) -> Any:
    """
    A small deterministic classifier trained with ``ctx.callbacks()`` (the data in the same order
    every epoch). ``custom_config``: ``rows``, ``epochs``, ``record_dir`` (each worker appends the
    epochs it begins to ``worker-<i>.epochs``) and, to kill a worker once, ``kill`` =
    ``{"worker": i, "epoch": e, "batch": b, "marker": path}``: that worker SIGKILLs itself at
    batch ``b`` of epoch ``e`` unless the marker exists (it writes it first).
    """
    import logging
    import signal

    import numpy as np
    import tensorflow as tf

    config = ctx.custom_config
    rows, epochs = int(config.get("rows", 2048)), int(config.get("epochs", 6))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 8)).astype("float32")
    y = ((x @ rng.normal(size=8) + 0.7 * rng.normal(size=rows)) > 0).astype("float32")
    cut = int(rows * 0.8)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA

    def batches(a: Any, b: Any) -> Any:
        return tf.data.Dataset.from_tensor_slices((a, b)).batch(64).with_options(options)

    keras = ctx.keras
    with ctx.strategy.scope():
        model = keras.Sequential(
            [
                keras.Input(shape=(8,)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy", metrics=["accuracy"])
    index, kill = ctx.role.index, config.get("kill") or {}
    record = Path(config["record_dir"], f"worker-{index}.epochs") if config.get("record_dir") else None

    class Record(keras.callbacks.Callback):  # type: ignore[misc]
        epoch = -1

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch = epoch
            logging.getLogger("checkpointed_run_fn").info("worker %d begins epoch %d", index, epoch)
            if record is not None:
                with record.open("a") as out:
                    out.write(f"{epoch}\n")

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if kill.get("worker") != index or (self.epoch, batch) != (kill["epoch"], kill["batch"]):
                return
            marker = Path(kill["marker"])
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)

    model.fit(
        batches(x[:cut], y[:cut]),
        validation_data=batches(x[cut:], y[cut:]),
        epochs=epochs,
        callbacks=[*ctx.callbacks(), Record()],
        verbose=0,
    )
    return model


def lose_a_peer(spec: dict[str, Any]) -> dict[str, Any]:
    """Fail as a gang's worker does when its peer is gone: TensorFlow's ``UnavailableError`` (by name)."""
    error = type(
        "UnavailableError", (RuntimeError,), {"__module__": "tensorflow.python.framework.errors_impl"}
    )
    try:
        raise error(
            "Graph execution error:\n\nDetected at node 'CollectiveReduceV2' defined at (most recent call "
            'last):\n  File "train.py", line 3\nCollective ops is aborted by: Task '
            "/job:worker/replica:0/task:1 heartbeat timeout.\n\t [[{{node CollectiveReduceV2}}]]"
        )
    except RuntimeError as err:
        raise ValueError("fit() failed") from err
