"""Distributed training: ``DistributedTrainingOperator``, cold and warm, against the job as a plain script.

Run from the repository root, with Airflow's interpreter (the steps run in the step environment)::

    .venv/bin/python benchmarks/training.py [--rows 60000] [--epochs 5] [--repeat 1] [--keep]
                                            [--json FILE]

The fixed job: one version of the demo dataset (``generate_dataset``, seed 0, ``--rows`` rows, one
CSV), trained for ``--epochs`` epochs with the demo ``run_fn``'s model
(``airflow_ml_provider.ml.training.demo``: 20 % of the rows held out for validation with a fixed
seed, normalization and one-hot inputs, one hidden layer of 32 units, Adam 0.01, global batch 256),
random seed 7. The step environment (Python 3.11 with TensorFlow) is ``[ml_provider] step_python``
(``AIRFLOW__ML_PROVIDER__STEP_PYTHON``) when set, else the tests' choice
(``tests/support/step_env.py``: `.venv-steps/bin/python` unless this interpreter has TensorFlow).
Five cases, each a fresh process, interleaved over ``--repeat`` rounds:

* ``plain script``: ``STEP_PYTHON benchmarks/training.py --child plain``: sets
  ``TF_USE_LEGACY_KERAS=1``, imports TensorFlow and ``tf_keras``, reads the CSV with pandas, splits
  it as the demo does, builds the same model (the demo's ``build_model`` / ``make_dataset``) under
  ``OneDeviceStrategy("/cpu:0")``, fits it with validation, and saves a SavedModel the way the
  training step does (``serving_default`` signature, no layer traces, no optimizer). No Airflow, no
  MLflow. Timed in this process, from the start of the child to its exit, so it pays the
  interpreter's start and the TensorFlow import, as a cold operator's worker does.
* ``operator, N worker(s), cold|warm`` (N = 1, 2): a child process (Airflow's interpreter) loads a DAG
  file this script writes into a temporary dags folder (one ``DistributedTrainingOperator`` task,
  ``placement="interpreter"`` in the step environment, local worker processes, the demo ``run_fn``,
  the same hyperparameters and seed; ``multi_worker_mirrored`` for 2 workers) and runs it with
  ``dag.test()`` against a temporary Airflow home (SQLite metadata DB, ``airflow db migrate``) and a
  real ``mlflow server`` (SQLite backend, its own artifact root) as the ``mlflow_default``
  connection. *cold*: ``[ml_provider] warm_steps = False``, every worker (and the check of the
  ``run_fn``) a new interpreter that imports TensorFlow. *warm*: ``warm_steps = True`` with a warm
  step server already up (:mod:`airflow_ml_provider.ml.warm`, in a folder of the benchmark's own,
  ``AIRFLOW_ML_WARM_DIR``): at the start of each round, an untimed warm-up child runs the same task
  on 500 rows for 1 epoch, which starts the server (and creates the MLflow experiment, so that no
  timed case pays that), and the script waits until the server has imported the TensorFlow stack;
  each worker of a warm timed run is then a child forked from it. A warm run counts only when its
  task log says so for every worker (``Running step train_model with STEP_PYTHON (warm: child N of
  its step server)``), nothing started cold, and no new server started during it (a server that
  finds its code changed on disk stops taking steps, and the next step starts another: the case
  then runs once more, once that server is warm); otherwise it is a failed check. Every worker must
  also run in the step environment's interpreter. Timed: the task instance's ``end_date -
  start_date`` from the DAG run (the whole task: its MLflow runs, the spec, the check of the
  ``run_fn``, the worker processes, training, the SavedModel export, the pyfunc model logged to
  MLflow, the result). Before it, the same child runs a no-op DAG with ``dag.test()``, so that the
  start of ``dag.test()``'s in-process execution API (about 15 s on its first request) is not
  counted: a deployment's API server is up before a task starts. The wall clock around the training
  ``dag.test()`` is shown too; it adds the DAG run's creation and bookkeeping and is not part of the
  ratio.

The server's imports at its start are reported apart (from its log): until it is warm, steps start
cold, so a fresh machine's first steps are the cold case. The benchmark's servers are stopped at the
end (:func:`airflow_ml_provider.runners.warm.stop_servers`).

Reported per case (median of the rounds): seconds, examples/s (training rows x epochs / seconds;
the held-out rows are not counted) and the time inside ``run_fn`` (reading, building, fitting; the
plain script times the same span); then where the time goes: the plain script's own timers, and
the operator's phases from the timestamps of marker lines in its task log. Goal, judged on the
warm case (a deployment's steady state): operator with 1 worker, warm / plain script - 1 <= 15 % on
a job of about 60 s; the cold ratio is printed beside it, not judged. The speed of 2 workers against
1 is reported, not judged: on a 2-core machine the two worker processes share the cores. Exit
status 0 when every run trained all its epochs, every check held and the goal is met.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# Sized for about 60 s of the plain script on a quiet 2-core machine with the demo model as it is
# (measured: 85 s at load average 3); the demo's Normalization.adapt() calls take about a third.
DEFAULT_ROWS = 60_000
DEFAULT_EPOCHS = 5
DATA_SEED = 0
SEED = 7
HYPERPARAMETERS = {"batch_size": 256, "learning_rate": 0.01, "hidden_units": 32}
HOLDOUT_FRACTION = 0.2  # the demo run_fn's, checked against the module in the plain child
GOAL_OVERHEAD = 0.15
DAG_ID = "bench_distributed_training"
WARM_UP_DAG_ID = "bench_warm_up"
TASK_ID = "train"
STEP = "train_model"
STEP_PYTHON_ENV = "AIRFLOW__ML_PROVIDER__STEP_PYTHON"
WARM_STEPS_ENV = "AIRFLOW__ML_PROVIDER__WARM_STEPS"
# Longer than a round, so that the server warmed up before the warm cases is still there for them.
WARM_IDLE_ENV, WARM_IDLE_SECONDS = "AIRFLOW__ML_PROVIDER__WARM_IDLE_SECONDS", "3600"
WARM_UP_ROWS, WARM_UP_EPOCHS = 500, 1
SERVER_READY_SECONDS = 600.0

PLAIN = "plain script"
COLD_1, WARM_1 = "operator, 1 worker, cold", "operator, 1 worker, warm"
WARM_2, COLD_2 = "operator, 2 workers, warm", "operator, 2 workers, cold"
CASES = (PLAIN, COLD_1, WARM_1, WARM_2, COLD_2)  # the order of a round, and of the report
CASE_WORKERS = {COLD_1: 1, WARM_1: 1, WARM_2: 2, COLD_2: 2}
WARM_CASES = frozenset({WARM_1, WARM_2})
JUDGED = WARM_1

# The runner's log lines (airflow_ml_provider.runners.python) that say how each worker started.
STEP_STARTED = re.compile(
    rf"Running step {STEP} with (?P<python>\S+)(?: \(warm: child (?P<child>\d+) of its step server\))?"
)
STARTED_COLD = re.compile(rf"Step {STEP} starts in a new interpreter[^\[]*")
SERVER_WARM = re.compile(r"Warm step server \S+ \(pid (?P<pid>\d+)[^)]*\): imported .* in (?P<s>[\d.]+) s")

DAG_FILE = '''
"""Generated by benchmarks/training.py: a no-op DAG (warm-up) and the training DAG (placement="interpreter")."""
from __future__ import annotations

from airflow.sdk import DAG, task

from airflow_ml_provider.operators.training import DistributedTrainingOperator

with DAG(dag_id={warm_up_id!r}, schedule=None, catchup=False, tags=["benchmark"]):

    @task
    def noop() -> None:
        return None

    noop()

with DAG(
    dag_id={dag_id!r},
    schedule=None,
    catchup=False,
    render_template_as_native_obj=True,
    params={{"train_uri": "", "epochs": 5, "workers": 1}},
    tags=["benchmark"],
):
    DistributedTrainingOperator(
        task_id={task_id!r},
        run_fn="airflow_ml_provider.ml.training.demo:run_fn",
        train_uri="{{{{ params.train_uri }}}}",
        hyperparameters={{"epochs": "{{{{ params.epochs }}}}", **{hyperparameters!r}}},
        workers="{{{{ params.workers }}}}",
        placement="interpreter",
        seed={seed!r},
        retries=0,
    )
'''


# --------------------------------------------------------------------------- child: plain script


def _save_like_the_step(model: Any, export_dir: str) -> None:
    """A SavedModel with a ``serving_default`` over the named inputs, as ``train_model`` writes it."""
    import tensorflow as tf

    specs = {i.name: tf.TensorSpec(i.shape, i.dtype, name=i.name) for i in model.inputs}

    def serve(features: dict[str, Any]) -> Any:
        return {"output": model(features, training=False)}

    signature = tf.function(serve).get_concrete_function(specs)
    model.save(
        export_dir,
        save_format="tf",
        include_optimizer=False,
        save_traces=False,
        signatures={"serving_default": signature},
    )


def plain_main(data: Path, epochs: int, out: Path) -> None:
    """The job without Airflow or MLflow: import, read, split, build, fit, save; phases timed."""
    started = time.perf_counter()
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import types

    import pandas as pd
    import tensorflow as tf
    import tf_keras
    from tensorflow.python.autograph.core import config as autograph_config

    from airflow_ml_provider.ml.training import demo

    # The same AutoGraph rule the step applies (ml/training/step.py, import_tensorflow): without it
    # the first fit spends ~20 s converting tf_keras, and the baseline would measure that, not the
    # operator's overhead.
    autograph_config.CONVERSION_RULES = (
        autograph_config.DoNotConvert("tf_keras"),
        *autograph_config.CONVERSION_RULES,
    )

    imported = time.perf_counter()
    if demo.HOLDOUT_FRACTION != HOLDOUT_FRACTION:
        raise SystemExit(
            f"demo.HOLDOUT_FRACTION is {demo.HOLDOUT_FRACTION}, this script assumes {HOLDOUT_FRACTION}"
        )
    tf_keras.utils.set_random_seed(SEED)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    hp = {**demo.DEFAULTS, **HYPERPARAMETERS, "epochs": epochs}
    fit_started = time.perf_counter()  # the span the operator's train_seconds covers (run_fn)
    frame = pd.concat([pd.read_csv(p) for p in sorted(data.glob("*.csv"))], ignore_index=True)
    held_out = frame.sample(frac=HOLDOUT_FRACTION, random_state=0)
    train = frame.drop(held_out.index)
    with strategy.scope():
        # build_model uses nothing of its context but ctx.keras.
        model = demo.build_model(types.SimpleNamespace(keras=tf_keras), train, hp)  # type: ignore[arg-type]
    batch_size = int(hp["batch_size"])
    history = model.fit(
        demo.make_dataset(train, batch_size, shuffle=True),
        validation_data=demo.make_dataset(held_out, batch_size, shuffle=False),
        epochs=int(hp["epochs"]),
        verbose=2,
    )
    fitted = time.perf_counter()
    export_dir = tempfile.mkdtemp(prefix="bench-plain-model-")
    try:
        _save_like_the_step(model, f"{export_dir}/model")
        saved = time.perf_counter()
    finally:
        shutil.rmtree(export_dir, ignore_errors=True)
    metrics = {k: float(v[-1]) for k, v in history.history.items() if v}
    result = {
        "rows_trained": len(train),
        "epochs": len(history.history.get("loss", [])),
        "final_metrics": metrics,
        "import_seconds": imported - started,
        "run_fn_seconds": fitted - fit_started,
        "save_seconds": saved - fitted,
    }
    out.write_text(json.dumps(result))


# --------------------------------------------------------------------------- child: operator


def operator_main(data: Path, epochs: int, workers: int, out: Path) -> None:
    """
    Load the generated DAGs; run the no-op one, then the training one, with ``dag.test()``.

    The no-op run starts ``dag.test()``'s in-process execution API (its first request took about
    15 s here), which would otherwise fall inside the training task's start and end dates; a real
    deployment's API server is up before any task starts.
    """
    started = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors or DAG_ID not in bag.dags or WARM_UP_DAG_ID not in bag.dags:
        raise SystemExit(f"cannot load {DAG_ID} and {WARM_UP_DAG_ID}: {bag.import_errors}")
    loaded = time.perf_counter()
    warm_up = bag.dags[WARM_UP_DAG_ID].test()
    if str(warm_up.state) != "success":
        raise SystemExit(f"the warm-up DAG run ended {warm_up.state}")
    warmed = time.perf_counter()
    dag_run = bag.dags[DAG_ID].test(run_conf={"train_uri": str(data), "epochs": epochs, "workers": workers})
    tested = time.perf_counter()
    ti = next(t for t in dag_run.get_task_instances() if t.task_id == TASK_ID)
    result: dict[str, Any] = {
        "state": str(ti.state),
        "dag_run_state": str(dag_run.state),
        "task_seconds": (ti.end_date - ti.start_date).total_seconds()
        if ti.start_date and ti.end_date
        else None,
        "dag_test_seconds": tested - warmed,
        "warm_up_seconds": warmed - loaded,
        "parse_seconds": loaded - started,
        "ti_start": ti.start_date.isoformat() if ti.start_date else None,
        "ti_end": ti.end_date.isoformat() if ti.end_date else None,
    }
    if str(ti.state) == "success":
        xcom = ti.xcom_pull(task_ids=TASK_ID) or {}
        result.update(
            {
                "epochs": xcom.get("epochs"),
                "workers": xcom.get("workers"),
                "strategy": xcom.get("strategy"),
                "final_metrics": xcom.get("final_metrics", {}),
                "run_fn_seconds": xcom.get("train_seconds"),
                "model_uri": xcom.get("model_uri"),
            }
        )
    out.write_text(json.dumps(result))


# --------------------------------------------------------------------------- parent: services


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MlflowServer:
    """``mlflow server`` on a free port, SQLite backend and artifact root in ``workdir``."""

    def __init__(self, workdir: Path, workers: int = 2) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.workers = workers
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> None:
        command = [
            str(VENV_BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            self.url.rsplit(":", 1)[1],
            "--workers",
            str(self.workers),
            "--backend-store-uri",
            f"sqlite:///{self.workdir / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.workdir / "artifacts"),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            time.sleep(0.3)
        raise RuntimeError(f"mlflow server not healthy after {timeout:.0f} s; see {self.log_path}")

    def wait_until_idle(self, timeout: float = 240.0) -> None:
        """Wait until the server's process group stops using CPU (its helpers import MLflow at first)."""
        if self.proc is None or not os.path.isdir("/proc"):
            time.sleep(20)
            return
        start, quiet = time.monotonic(), 0
        previous = _session_cpu_seconds(self.proc.pid)
        while time.monotonic() - start < timeout and quiet < 3:
            time.sleep(1.0)
            current = _session_cpu_seconds(self.proc.pid)
            quiet = quiet + 1 if current - previous < 0.05 else 0
            previous = current
        state = "idle" if quiet >= 3 else "still busy, going on"
        print(f"mlflow server helpers {state} after {time.monotonic() - start:.0f} s", flush=True)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)

    def connection_json(self) -> str:
        return json.dumps({"conn_type": "mlflow", "host": self.url})


def _session_cpu_seconds(session_id: int) -> float:
    """CPU seconds used so far by every process of a session (Linux /proc)."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def prepare_airflow(workdir: Path) -> None:
    """An isolated Airflow home with a migrated SQLite DB and a dags folder holding the benchmark DAG."""
    home, dags = workdir / "airflow_home", workdir / "dags"
    home.mkdir()
    dags.mkdir()
    (dags / "bench_training.py").write_text(
        DAG_FILE.format(
            dag_id=DAG_ID,
            warm_up_id=WARM_UP_DAG_ID,
            task_id=TASK_ID,
            hyperparameters=HYPERPARAMETERS,
            seed=SEED,
        )
    )
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        }
    )
    started = time.perf_counter()
    done = subprocess.run(
        [str(VENV_BIN / "airflow"), "db", "migrate"], capture_output=True, text=True, cwd=workdir
    )
    if done.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    print(f"airflow db migrate (SQLite) in {time.perf_counter() - started:.1f} s", flush=True)


def generate_data(workdir: Path, rows: int, name: str = "data") -> Path:
    """One version of the demo dataset in ``workdir / name``; return its directory."""
    code = (
        "import json, sys; from airflow_ml_provider.ml.datagen import generate_dataset as g; "
        "print(json.dumps(g(json.loads(sys.argv[1]))))"
    )
    spec = {"root": str(workdir / name), "rows": rows, "seed": DATA_SEED}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)], check=True, cwd=REPO_ROOT, capture_output=True
    )
    version = workdir / name / "version=0001"
    size = sum(p.stat().st_size for p in version.glob("*.csv"))
    print(
        f"data: {rows} rows, {size / 1e6:.1f} MB at {version} ({time.perf_counter() - started:.1f} s)",
        flush=True,
    )
    return version


# --------------------------------------------------------------------------- parent: phases

# Lines of the operator's task log that mark where its time goes (worker 0 is the chief).
MARKERS = {
    "mlflow_run": ("MLflow run ", " of task "),
    "worker_started": ("[worker 0]", "Step train_model: starting"),
    "strategy_built": ("[worker 0]", "(chief): strategy"),
    "result_written": ("[worker 0]", "Step train_model: result written"),
}
# (label, the marker that ends the phase); None: the chief's run_fn, whose length the XCom gives.
PHASES: tuple[tuple[str, str | None], ...] = (
    ("task start -> MLflow run ready (task imports mlflow, opens the runs)", "mlflow_run"),
    ("-> worker process running (spec logged, run_fn checked, gang started)", "worker_started"),
    ("-> strategy built (cold: worker imports TensorFlow; the step)", "strategy_built"),
    ("run_fn on the chief (train_seconds)", None),
    ("-> result written (SavedModel, pyfunc model logged, result.json)", "result_written"),
    ("-> task end (worker exit, XCom, runs ended)", "ti_end"),
)


def _timestamp(text: str) -> datetime.datetime | None:
    with contextlib.suppress(ValueError):
        stamp = datetime.datetime.fromisoformat(text.split(" ", 1)[0])
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=datetime.UTC)
    return None


def operator_phases(log_text: str, run: dict[str, Any]) -> dict[str, float] | None:
    """
    Seconds per phase of the operator's task, from the timestamps of its log lines (best effort).

    None when a marker is missing (a log format that changed): the table then shows no breakdown.
    """
    if not run.get("ti_start") or not run.get("ti_end") or run.get("run_fn_seconds") is None:
        return None
    marks: dict[str, datetime.datetime] = {}
    for line in log_text.splitlines():
        for name, needles in MARKERS.items():
            if name not in marks and all(n in line for n in needles):
                stamp = _timestamp(line)
                if stamp is not None:
                    marks[name] = stamp
    if len(marks) != len(MARKERS):
        return None
    marks["ti_start"] = datetime.datetime.fromisoformat(run["ti_start"])
    marks["ti_end"] = datetime.datetime.fromisoformat(run["ti_end"])
    run_fn = float(run["run_fn_seconds"])
    previous = marks["ti_start"]
    phases: dict[str, float] = {}
    for label, mark in PHASES:
        end = previous + datetime.timedelta(seconds=run_fn) if mark is None else marks[mark]
        phases[label] = (end - previous).total_seconds()
        previous = end
    return phases


def step_starts(log_text: str) -> dict[str, Any]:
    """How the task's workers started, from the runner's lines: interpreter, warm child (or None)."""
    starts = [(m["python"], int(m["child"]) if m["child"] else None) for m in STEP_STARTED.finditer(log_text)]
    return {"step_starts": starts, "started_cold": [m[0].strip() for m in STARTED_COLD.finditer(log_text)]}


# --------------------------------------------------------------------------- parent: warm servers


def resolve_step_python() -> str:
    """The step environment's interpreter: ``[ml_provider] step_python`` when set, else the tests' choice."""
    given = os.environ.get(STEP_PYTHON_ENV)
    if given:
        return given
    tests = str(REPO_ROOT / "tests")
    if tests not in sys.path:
        sys.path.append(tests)
    from support.step_env import step_python

    return step_python()


def live_servers(folder: Path) -> dict[int, Path]:
    """The warm step servers of ``folder`` that run: pid -> the server's log."""
    servers: dict[int, Path] = {}
    for pid_file in folder.glob("*.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            if b"airflow_ml_provider.ml.warm" in Path(f"/proc/{pid}/cmdline").read_bytes():
                servers[pid] = pid_file.with_suffix(".log")
    return servers


def wait_for_warm_server(folder: Path, timeout: float = SERVER_READY_SECONDS) -> tuple[int, float]:
    """Wait until a server of ``folder`` has imported its modules; return its pid and import seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, log_path in live_servers(folder).items():
            with contextlib.suppress(OSError):
                found = SERVER_WARM.search(log_path.read_text(errors="replace"))
                if found and int(found["pid"]) == pid:
                    return pid, float(found["s"])
        time.sleep(1.0)
    logs = ", ".join(str(p) for p in folder.glob("*.log")) or "none"
    raise RuntimeError(
        f"no warm step server in {folder} finished its imports within {timeout:.0f} s (logs: {logs})"
    )


def warm_up_server(data: Path, workdir: Path, folder: Path, round_no: int) -> dict[str, Any]:
    """
    A warm step server ready for the warm cases: an untimed operator task (``WARM_UP_ROWS`` rows,
    ``WARM_UP_EPOCHS`` epoch) starts it, or finds it up and current; then wait for its imports.

    The task also creates the MLflow experiment and has the MLflow server answer each kind of
    request once, which the first timed operator case would pay otherwise (about 4 s here).
    """
    started = time.perf_counter()
    run_operator(f"warm-up-{round_no}", data, WARM_UP_EPOCHS, 1, True, workdir)
    pid, import_seconds = wait_for_warm_server(folder)
    seconds = time.perf_counter() - started
    print(
        f"  round {round_no}: warm-up (untimed: an operator task on {WARM_UP_ROWS} rows) {seconds:.1f} s; "
        f"step server {pid} warm (its imports took {import_seconds:.1f} s)",
        flush=True,
    )
    return {"pid": pid, "import_seconds": import_seconds, "seconds": seconds}


# --------------------------------------------------------------------------- parent: runs


def _run_child(
    command: list[str], env: dict[str, str], name: str, workdir: Path
) -> tuple[dict[str, Any], str]:
    """Run one child process; its JSON result (with ``process_seconds``) and its output."""
    out = workdir / f"result-{name}.json"
    log = workdir / f"log-{name}.txt"
    command = [*command, "--out", str(out)]
    started = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    process_seconds = time.perf_counter() - started
    text = log.read_text(errors="replace")
    if done.returncode != 0 or not out.is_file():
        tail = "\n".join(text.splitlines()[-40:])
        raise RuntimeError(f"{name} failed (exit {done.returncode}); see {log}:\n{tail}")
    result: dict[str, Any] = json.loads(out.read_text())
    result["process_seconds"] = process_seconds
    result["log"] = str(log)
    return result, text


def run_operator(
    name: str, data: Path, epochs: int, workers: int, warm: bool, workdir: Path
) -> dict[str, Any]:
    """The operator's task in a fresh Airflow process (``warm_steps`` as given); ``seconds`` its span."""
    script = str(Path(__file__).resolve())
    command = [sys.executable, script, "--child", "operator", "--data", str(data), "--epochs", str(epochs)]
    env = {**os.environ, WARM_STEPS_ENV: str(warm)}
    result, text = _run_child([*command, "--workers", str(workers)], env, name, workdir)
    if result.get("state") != "success" or result.get("task_seconds") is None:
        tail = "\n".join(text.splitlines()[-40:])
        raise RuntimeError(f"{name}: task ended {result.get('state')}; see {result['log']}:\n{tail}")
    result["seconds"] = result["task_seconds"]
    result["phases"] = operator_phases(text, result)
    result.update(step_starts(text))
    return result


def run_case(
    case: str, data: Path, epochs: int, workdir: Path, label: str, step_python: str
) -> dict[str, Any]:
    """Run one case in a fresh process; return its JSON result with ``seconds`` (the timed span)."""
    name = f"{case.replace(',', '').replace(' ', '_')}-{label}"
    if case != PLAIN:
        return run_operator(name, data, epochs, CASE_WORKERS[case], case in WARM_CASES, workdir)
    script = str(Path(__file__).resolve())
    command = [step_python, script, "--child", "plain", "--data", str(data), "--epochs", str(epochs)]
    result, _ = _run_child(command, dict(os.environ), name, workdir)
    result["seconds"] = result["process_seconds"]
    return result


def run_warm_case(
    case: str, data: Path, epochs: int, workdir: Path, round_no: int, step_python: str, folder: Path
) -> dict[str, Any]:
    """
    Run a warm case; once more when a new step server started during it (the server it was warmed
    with found its code changed on disk and stopped taking steps), after that server is warm.
    """
    for attempt in (1, 2):
        before = set(live_servers(folder))
        run = run_case(case, data, epochs, workdir, f"{round_no}-{attempt}", step_python)
        run["new_servers"] = sorted(set(live_servers(folder)) - before)
        if not run["new_servers"] or attempt == 2:
            return run
        print(
            f"  round {round_no}: {case}: a new step server ({run['new_servers']}) started during the "
            "run (the warm one found its code changed on disk?); once it is warm, the case runs again",
            flush=True,
        )
        wait_for_warm_server(folder)
    raise AssertionError("unreachable")


def check_run(case: str, run: dict[str, Any], epochs: int) -> list[str]:
    """The problems of one run: epochs not all trained, the wrong gang."""
    problems = []
    if run.get("epochs") != epochs:
        problems.append(f"{case}: trained {run.get('epochs')} epochs, not {epochs}")
    workers = CASE_WORKERS.get(case)
    if workers is not None and run.get("workers") != workers:
        problems.append(f"{case}: XCom says {run.get('workers')} workers, not {workers}")
    if workers == 2 and run.get("strategy") != "multi_worker_mirrored":
        problems.append(f"{case}: strategy {run.get('strategy')}, not multi_worker_mirrored")
    return problems


def check_start(case: str, run: dict[str, Any], step_python: str) -> list[str]:
    """
    The problems of how an operator run's workers started: not in the step environment, or cold
    where the case is warm (or the other way round), or a new server started during the run.
    """
    warm = case in WARM_CASES
    starts = run.get("step_starts", [])
    problems = []
    if len(starts) != CASE_WORKERS[case]:
        problems.append(
            f"{case}: {len(starts)} '{STEP}' worker starts in its task log, not {CASE_WORKERS[case]}"
        )
    for python, child in starts:
        if python != step_python:
            problems.append(f"{case}: a worker ran in {python}, not the step environment {step_python}")
        if warm and child is None:
            problems.append(f"{case}: a worker started in a new interpreter, not warm ({run['log']})")
        if not warm and child is not None:
            problems.append(f"{case}: a worker ran in warm child {child} although warm_steps is False")
    if warm:
        problems += [f"{case}: the task log says: {line}" for line in run.get("started_cold", [])]
        if run.get("new_servers"):
            problems.append(f"{case}: a new step server started during the timed run: it was not warm")
    return problems


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return float(statistics.median(values)) if values else None


def _median_phases(case_runs: list[dict[str, Any]]) -> dict[str, float] | None:
    """Median seconds per phase: the operator's from its log, the plain script's from its own timers."""
    if "import_seconds" in case_runs[0]:
        plain = [
            {
                "imports (pandas, TensorFlow, tf_keras, the demo module)": r["import_seconds"],
                "run_fn span (read, split, build, fit)": r["run_fn_seconds"],
                "SavedModel export": r["save_seconds"],
                "interpreter start and exit, the rest": r["seconds"]
                - r["import_seconds"]
                - r["run_fn_seconds"]
                - r["save_seconds"],
            }
            for r in case_runs
        ]
        return {k: float(statistics.median(p[k] for p in plain)) for k in plain[0]}
    found = [r["phases"] for r in case_runs if r.get("phases")]
    if not found:
        return None
    return {k: float(statistics.median(p[k] for p in found)) for k in found[0]}


def _case_summary(case_runs: list[dict[str, Any]], rows_trained: int, epochs: int) -> dict[str, Any]:
    seconds = _median(case_runs, "seconds") or 0.0
    return {
        "n": len(case_runs),
        "seconds": seconds,
        "min": min(r["seconds"] for r in case_runs),
        "max": max(r["seconds"] for r in case_runs),
        "examples_per_second": rows_trained * epochs / seconds if seconds else None,
        "run_fn_seconds": _median(case_runs, "run_fn_seconds"),
        "process_seconds": _median(case_runs, "process_seconds"),
        "dag_test_seconds": _median(case_runs, "dag_test_seconds"),
        "warm_up_seconds": _median(case_runs, "warm_up_seconds"),
        "val_accuracy": _median(
            [{"v": r.get("final_metrics", {}).get("val_accuracy")} for r in case_runs], "v"
        ),
        "phases": _median_phases(case_runs),
    }


def summarise(runs: dict[str, list[dict[str, Any]]], rows_trained: int, epochs: int) -> dict[str, Any]:
    """
    The medians per case and the ratios. ``overhead`` / ``overhead_pass`` (the keys of the earlier
    three-case report) are the judged, warm case's; ``two_over_one_speed`` is the warm gangs'.
    """
    summary = {case: _case_summary(runs[case], rows_trained, epochs) for case in CASES}
    s = {case: summary[case]["seconds"] for case in CASES}
    overhead_warm, overhead_cold = s[WARM_1] / s[PLAIN] - 1, s[COLD_1] / s[PLAIN] - 1
    return {
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "rows_trained": rows_trained,
        "epochs": epochs,
        "summary": summary,
        "judged_case": JUDGED,
        "overhead": overhead_warm,
        "overhead_pass": overhead_warm <= GOAL_OVERHEAD,
        "overhead_warm": overhead_warm,
        "overhead_cold": overhead_cold,
        "warm_saves_seconds": {"1 worker": s[COLD_1] - s[WARM_1], "2 workers": s[COLD_2] - s[WARM_2]},
        "two_over_one_speed": s[WARM_1] / s[WARM_2],
        "two_over_one_speed_cold": s[COLD_1] / s[COLD_2],
        "runs": runs,
    }


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table, the first column left-aligned, the others right-aligned."""
    widths = [max(len(col), *(len(r[i]) for r in rows)) for i, col in enumerate(columns)]

    def line(cells: list[str]) -> str:
        padded = [
            v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return [line(columns), rule, *(line(r) for r in rows)]


def _main_rows(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    plain = summary[PLAIN]["seconds"]
    return [
        [
            case,
            str(s["n"]),
            f"{s['seconds']:.1f}",
            f"{s['min']:.1f}-{s['max']:.1f}",
            _fmt(s["examples_per_second"], ",.0f"),
            f"{s['seconds'] / plain:.3f}",
            _fmt(s["run_fn_seconds"]),
            _fmt(s["seconds"] - s["run_fn_seconds"] if s["run_fn_seconds"] is not None else None),
            _fmt(s["dag_test_seconds"]),
            _fmt(s["val_accuracy"], ".4f"),
        ]
        for case, s in summary.items()
    ]


def _print_phases(summary: dict[str, dict[str, Any]]) -> None:
    print("\nwhere the time goes (median seconds; the operator's from the timestamps of its task log):")
    for label, seconds in (summary[PLAIN]["phases"] or {}).items():
        print(f"  plain script: {label:<58} {seconds:6.1f}")
    operators = [case for case in CASES if case != PLAIN]
    missing = [case for case in operators if not summary[case]["phases"]]
    shown = [case for case in operators if case not in missing]
    if shown:
        short = [
            case.removeprefix("operator, ").replace(" workers", "w").replace(" worker", "w") for case in shown
        ]
        rows = [[label, *(f"{summary[case]['phases'][label]:.1f}" for case in shown)] for label, _ in PHASES]
        print("\n".join(_table(["operator phase", *short], rows)))
    for case in missing:
        print(f"  {case}: no breakdown (log markers not found)")


def print_report(report: dict[str, Any]) -> None:
    summary = report["summary"]
    columns = [
        "case", "n", "seconds", "min-max s", "examples/s", "x plain", "in run_fn s", "outside s",
        "dag.test() s", "val_accuracy",
    ]  # fmt: skip
    print()
    print(
        f"Training: {report['rows_trained']:,} training rows x {report['epochs']} epochs "
        f"(Python {report['python']}, {report['machine']}; median of the rounds; "
        f"steps in {report['step_python']})"
    )
    print()
    print("\n".join(_table(columns, _main_rows(summary))))
    print()
    print("seconds: plain script = its process from start to exit (interpreter start, TensorFlow import);")
    print("         operator = its task instance, end_date - start_date, after a warm-up dag.test() of a")
    print("         no-op DAG in the same process (dag.test() s: the wall clock of the training run).")
    print("cold: warm_steps=False, each worker a new interpreter; warm: each worker a child forked from")
    print("      a step server that had imported the TensorFlow stack (started by an untimed task).")
    print("in run_fn s: reading, splitting, building, fitting (operator: the chief's train_seconds, which")
    print("             also hold its per-epoch MLflow logging);")
    print("outside s: the rest (plain: interpreter, imports, SavedModel; operator: also the task's MLflow")
    print("           runs, the worker processes, the pyfunc model logged to MLflow, the result).")
    _print_phases(summary)
    verdict = "PASS" if report["overhead_pass"] else "FAIL"
    if JUDGED in report["not_warm"]:
        verdict = "FAIL (the timed run did not start warm: see the checks)"
    saves = report["warm_saves_seconds"]
    print()
    print(
        f"overhead, operator 1 worker warm / plain script - 1: {100 * report['overhead_warm']:+.1f} % "
        f"(goal <= {100 * GOAL_OVERHEAD:.0f} %) -> {verdict}"
    )
    print(
        f"overhead, operator 1 worker cold / plain script - 1: {100 * report['overhead_cold']:+.1f} % "
        f"(not judged; warm saves {saves['1 worker']:.1f} s, 2 workers {saves['2 workers']:.1f} s)"
    )
    print(
        f"speed, 2 workers / 1 worker (operator): warm {report['two_over_one_speed']:.2f}x, "
        f"cold {report['two_over_one_speed_cold']:.2f}x "
        f"(reported, not judged; {os.cpu_count()} CPUs shared by the gang)"
    )
    server = report["warm_server"]
    print(
        f"warm step server: its imports took {server['import_seconds']:.1f} s at its start (paid once per "
        "machine and step environment; until it is warm, steps start cold)"
    )
    plain = summary[PLAIN]["seconds"]
    if plain < 45 or plain > 90:
        print(f"note: the plain script took {plain:.0f} s; the goal is stated for a job of about 60 s")


def prepare_step_environment(step_python: str) -> None:
    """Check the step environment; read the libraries' files into the page cache (untimed)."""
    started = time.perf_counter()
    done = subprocess.run(
        [
            step_python,
            "-c",
            "import sys, tensorflow, tf_keras, mlflow, pandas; print(sys.version.split()[0])",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    if done.returncode != 0:
        raise SystemExit(
            f"the step environment {step_python} cannot import TensorFlow (set {STEP_PYTHON_ENV}, or "
            f"make step-env):\n{done.stderr[-2000:]}"
        )
    subprocess.run(
        [sys.executable, "-c", "import airflow.sdk, mlflow"], check=True, capture_output=True, cwd=REPO_ROOT
    )
    print(
        f"step environment {step_python} (Python {done.stdout.strip()}); warm-up imports in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )


@dataclass(frozen=True)
class Setup:
    """What every run of the benchmark shares."""

    workdir: Path
    data: Path  # the timed job's dataset version
    warm_up_data: Path  # the warm-up task's
    epochs: int
    step_python: str  # the step environment's interpreter
    warm_folder: Path  # AIRFLOW_ML_WARM_DIR: the benchmark's own warm step servers


def _round(
    round_no: int, setup: Setup
) -> tuple[dict[str, dict[str, Any]], list[str], set[str], dict[str, Any]]:
    """
    One round: the warm-up, then the cases (interleaved, so a change of machine load hits every
    case); the runs, their problems, the warm cases that did not run warm, the warm-up.
    """
    runs: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    not_warm: set[str] = set()
    server = warm_up_server(setup.warm_up_data, setup.workdir, setup.warm_folder, round_no)
    for case in CASES:
        if case in WARM_CASES:
            run = run_warm_case(
                case, setup.data, setup.epochs, setup.workdir, round_no, setup.step_python, setup.warm_folder
            )
        else:
            run = run_case(case, setup.data, setup.epochs, setup.workdir, str(round_no), setup.step_python)
        runs[case] = run
        problems += check_run(case, run, setup.epochs)
        start_problems = check_start(case, run, setup.step_python) if case != PLAIN else []
        if start_problems:
            problems += start_problems
            if case in WARM_CASES:
                not_warm.add(case)
        children = [str(child) for _, child in run.get("step_starts", []) if child is not None]
        how = "" if case == PLAIN else f"; warm children {', '.join(children)}" if children else "; cold"
        print(
            f"  round {round_no}: {case:<26} {run['seconds']:7.1f} s "
            f"(in run_fn {_fmt(run.get('run_fn_seconds'))} s, process {run['process_seconds']:.1f} s{how})"
            + (" <- see the checks" if start_problems else ""),
            flush=True,
        )
    return runs, problems, not_warm, server


def parent_main(args: argparse.Namespace) -> int:
    from airflow_ml_provider.runners.warm import WARM_DIR_ENV, stop_servers

    workdir = Path(tempfile.mkdtemp(prefix="ml-provider-bench-training-"))
    for name in [n for n in os.environ if n.startswith("MLFLOW_")]:
        del os.environ[name]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the same for the plain script and the workers
    step_python = resolve_step_python()
    warm_folder = workdir / "warm"  # the benchmark's own servers, stopped at the end
    os.environ.update(
        {STEP_PYTHON_ENV: step_python, WARM_DIR_ENV: str(warm_folder), WARM_IDLE_ENV: WARM_IDLE_SECONDS}
    )
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}; workdir {workdir}"
    )
    print(f"load average at the start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    server = MlflowServer(workdir / "mlflow")
    try:
        data = generate_data(workdir, args.rows)
        warm_up_data = generate_data(workdir, WARM_UP_ROWS, "warm-up-data")
        prepare_airflow(workdir)
        server.start()
        server.wait_until_idle()
        os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = server.connection_json()
        print(f"mlflow server at {server.url}", flush=True)
        prepare_step_environment(step_python)
        setup = Setup(workdir, data, warm_up_data, args.epochs, step_python, warm_folder)

        runs: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
        problems: list[str] = []
        servers: list[dict[str, Any]] = []
        not_warm: set[str] = set()
        for round_no in range(1, args.repeat + 1):
            round_runs, round_problems, round_not_warm, warm_server = _round(round_no, setup)
            for case, run in round_runs.items():
                runs[case].append(run)
            problems += round_problems
            not_warm |= round_not_warm
            servers.append(warm_server)
        rows_trained = int(runs[PLAIN][0]["rows_trained"])
        report = summarise(runs, rows_trained, args.epochs)
        report["step_python"] = step_python
        report["warm_server"] = servers[0]
        report["warm_servers"] = servers
        report["not_warm"] = sorted(not_warm)
        print(f"\nload average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print_report(report)
        if problems:
            print("\nchecks:\n" + "\n".join(f"  FAIL {p}" for p in problems))
        if args.json:
            report["problems"] = problems
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
            print(f"results written to {args.json}")
        return 0 if report["overhead_pass"] and not problems else 1
    finally:
        stopped = stop_servers(warm_folder) if warm_folder.is_dir() else []
        print(f"stopped the benchmark's warm step servers: {stopped or 'none running'}")
        server.stop()
        if args.keep:
            print(f"kept {workdir} (data, Airflow home, MLflow store, warm servers' logs, each run's log)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=DEFAULT_ROWS, help=f"rows of the dataset (default {DEFAULT_ROWS})"
    )
    parser.add_argument(
        "--epochs", type=int, default=DEFAULT_EPOCHS, help=f"epochs (default {DEFAULT_EPOCHS})"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="interleaved rounds of the five cases (default 1)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, data, stores)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--child", choices=("plain", "operator"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "plain":
        plain_main(args.data, args.epochs, args.out)
        return 0
    if args.child == "operator":
        operator_main(args.data, args.epochs, args.workers, args.out)
        return 0
    if args.rows < 500:
        parser.error("--rows must be at least 500")
    if args.epochs < 1 or args.repeat < 1:
        parser.error("--epochs and --repeat must be at least 1")
    return parent_main(args)


if __name__ == "__main__":
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
