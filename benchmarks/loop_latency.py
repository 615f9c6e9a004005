"""Loop latency: from a dataset version landing to the champion decision, against a warm-process floor.

Run from the repository root::

    .venv/bin/python benchmarks/loop_latency.py [--runs 1] [--cold | --compare-cold] [--json FILE]

Each run starts a real cluster (the test harness's ``AirflowCluster``: api-server, scheduler,
dag-processor and triggerer as subprocesses, LocalExecutor, a fresh PostgreSQL database; every step
in the step environment through ``[ml_provider] step_python``) and an ``mlflow server``, deploys
``dags_examples/continuous_training.py``, and lands the demo's versions (``scripts/demo.py``
``SCENARIO``): v1 (bootstraps the schema and the first champion; also warms the worker), then,
measured, v2 (six times the rows, the same model). v2 is written in a staging folder and renamed
into the landing root; the latency origin is the moment right after the rename. It prints
landing -> DAG run created -> each task (queued, start and end offsets, wall, the step's own
compute and the rest, overhead) -> decision.

* A task's compute is what its step logged from inside the step process (``Step <name> computed
  in N s``, :func:`airflow_ml_provider.ml.execute.execute_step`; a training gang: its slowest
  worker); wall is the task instance's start_date -> end_date; overhead = wall - compute, split by
  the task log's timestamps into before (task start -> step handed to its runner), launch (the step
  process's start and I/O) and after (step done -> task end). A task without a step (the branch,
  promotion) is all overhead. Each run's warm step servers live in a folder of its own
  (``AIRFLOW_ML_WARM_DIR``) and are stopped with its cluster.
* The decision is the log record ``Freshness: ... reached ... decided`` that the task which decides
  writes once the champion moved (or once it decided not to move it); the promote task's end when
  there is no such record. The provider's own figure (from the version's ``_SUCCESS`` marker) is
  printed beside it.
* The floor: the v2 run's own specs (read back from MLflow, where every task logs its spec) given
  to the same steps as plain functions (``execute_step``) one after another, in one step-environment
  process whose heavy imports (TensorFlow, TFDV, TFMA, MLflow, the step modules) are done first
  and timed apart: validate, train (one process, so ``one_device`` for the gang's two workers),
  evaluate the model it trained against the same baseline, infra-validate it, and register it
  with an alias (plain MLflow calls, on a model of its own).

Goals, judged on the median of ``--runs`` runs (of the warm mode when both modes run): landing
-> decision <= 35 s; loop overhead (decision - floor) / floor <= 2.0; validate and evaluate:
wall - compute <= 2 s each. ``--cold`` sets ``AIRFLOW__ML_PROVIDER__WARM_STEPS=False`` in the
cluster (the step interpreters started cold); ``--compare-cold`` runs both modes and prints the
ratio. Exit status 0 when every goal is met; all figures are printed (and written with
``--json``) either way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/postgres"
EXAMPLE = REPO_ROOT / "dags_examples" / "continuous_training.py"
DAG_ID, WATCHER, DATASET = "continuous_training", "churn_training_data_versions", "churn_training_data"
EXPERIMENT, MODEL_NAME, ALIAS = "continuous_training", "churn", "champion"
FLOOR_EXPERIMENT, FLOOR_MODEL = "loop_latency_floor", "churn_floor"
WARM_STEPS_ENV = "AIRFLOW__ML_PROVIDER__WARM_STEPS"
# Where the warm step servers of a run live (runners/warm.py): a folder per run, so that no server
# of an earlier run (they outlive their cluster until idle) serves a later one.
WARM_DIR_ENV = "AIRFLOW_ML_WARM_DIR"
# The DAG's tasks, in pipeline order, and the step each one runs.
PIPELINE = ("validate", "tune_or_train", "tune", "train", "evaluate", "infra_validate", "promote")
STEP_OF = {
    "validate": "validate_data",
    "train": "train_model",
    "evaluate": "evaluate_model",
    "infra_validate": "infra_validate",
}
GATED_TASKS = ("validate", "evaluate")  # "a validation or evaluation task on a warm worker"
GOAL_DECISION_S, GOAL_OVERHEAD_RATIO, GOAL_TASK_OVERHEAD_S = 35.0, 2.0, 2.0

COMPUTED = re.compile(r"Step (?P<step>\S+) computed in (?P<seconds>\d+(?:\.\d+)?) s")
WORKER = re.compile(r"\[worker (?P<worker>\d+)\]")
# The operator's record when it hands the spec to a runner (one interpreter, a gang, or in-process).
LAUNCHED = re.compile(r"(?:Running|Starting) step \S+ (?:with|in-process|as a gang)")
FRESHNESS = re.compile(
    r"Freshness: the dataset version reached (?P<stages>[\w ]+?) (?P<seconds>\d+(?:\.\d+)?) s after it"
)
LEADING_TIME = re.compile(r"^\[?(?P<ts>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?)")


# -- pure helpers (tests/unit/test_loop_latency_parsing.py) -----------------------------------


def parse_time(value: str) -> float | None:
    """Epoch seconds of an ISO timestamp (``Z`` or an offset; naive means UTC); None if unreadable."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace(",", "."))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def log_records(text: str) -> list[tuple[float | None, str]]:
    """(epoch, message) per line of a task log: JSON records (a real executor's files) or text."""
    records = []
    for line in text.splitlines():
        record: Any = None
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
        if isinstance(record, dict):
            stamp = record.get("timestamp")
            records.append((parse_time(str(stamp)) if stamp else None, str(record.get("event", ""))))
            continue
        found = LEADING_TIME.match(line)
        records.append((parse_time(found["ts"]) if found else None, line))
    return records


def step_computes(text: str) -> dict[str, float]:
    """Seconds each process of a task spent in its steps: ``""`` for one process, ``"worker i"`` each."""
    seconds: dict[str, float] = {}
    for _, message in log_records(text):
        found = COMPUTED.search(message)
        if found is None:
            continue
        worker = WORKER.search(message[: found.start()])
        key = f"worker {worker['worker']}" if worker else ""
        seconds[key] = seconds.get(key, 0.0) + float(found["seconds"])
    return seconds


def task_compute(text: str) -> float | None:
    """A task's compute: its step's own seconds (a gang: the slowest worker); None without a step."""
    seconds = step_computes(text)
    return max(seconds.values()) if seconds else None


def step_window(text: str) -> tuple[float | None, float | None]:
    """When the task handed its step to a runner, and when the (last) step process logged its compute."""
    launched = done = None
    for stamp, message in log_records(text):
        if launched is None and LAUNCHED.search(message):
            launched = stamp
        if COMPUTED.search(message):
            done = stamp
    return launched, done


def overhead_split(
    start: float | None, end: float | None, compute: float | None, window: tuple[float | None, float | None]
) -> dict[str, float | None]:
    """A step task's overhead in three: before its step launched, launch and I/O, after its step."""
    launched, done = window
    if start is None or end is None or compute is None or launched is None or done is None:
        return {"before": None, "launch": None, "after": None}
    return {"before": launched - start, "launch": done - launched - compute, "after": end - done}


def decision_record(text: str) -> tuple[float | None, float | None] | None:
    """(when, the provider's seconds) of the log record that says a run decided; None if absent."""
    for stamp, message in log_records(text):
        found = FRESHNESS.search(message)
        if found and "decided" in found["stages"].split():
            return stamp, float(found["seconds"])
    return None


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@dataclass
class Goal:
    label: str
    measured: float | None
    goal: float
    unit: str = ""

    @property
    def passed(self) -> bool:
        return self.measured is not None and self.measured <= self.goal

    def line(self) -> str:
        measured = "no figure"
        if self.measured is not None:
            measured = f"{self.measured:.2f}{self.unit} ({self.measured / self.goal:.2f} of it)"
        return (
            f"  {self.label} <= {self.goal:g}{self.unit}: {measured} -> {'PASS' if self.passed else 'FAIL'}"
        )


def goals(summary: dict[str, Any]) -> list[Goal]:
    """The issue's goals, from a mode's median figures."""
    rows = [
        Goal("landing -> decision (demo v2)", summary.get("decision_s"), GOAL_DECISION_S, " s"),
        Goal(
            "loop overhead (decision - floor) / floor",
            summary.get("overhead_ratio"),
            GOAL_OVERHEAD_RATIO,
            "x",
        ),
    ]
    for task in GATED_TASKS:
        rows.append(
            Goal(
                f"{task} task, warm worker: wall - compute",
                summary.get(f"{task}_overhead_s"),
                GOAL_TASK_OVERHEAD_S,
                " s",
            )
        )
    return rows


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each figure over the runs of one mode."""
    keys = ["decision_s", "run_created_s", "floor_s", "floor_imports_s", "overhead_ratio"]
    summary = {key: median([r.get(key) for r in runs]) for key in keys}
    for task in PIPELINE:
        for figure in ("wall", "compute", "overhead"):
            values = [(r["tasks"].get(task) or {}).get(figure) for r in runs]
            summary[f"{task}_{figure}_s"] = median(values)
    summary["runs"] = len(runs)
    return summary


# -- one run: cluster, landings, analysis ----------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def land(root: Path, staging: Path, version: int, knobs: dict[str, Any]) -> tuple[float, float]:
    """Write the demo's version in ``staging``, rename it into ``root``; (landed, _SUCCESS mtime)."""
    from airflow_ml_provider.ml.datagen import generate_dataset

    written = generate_dataset({"root": str(staging), "versions": [version], **knobs})
    source = Path(written["versions"][0]["uri"])
    root.mkdir(parents=True, exist_ok=True)
    os.rename(source, root / source.name)
    landed = time.time()
    return landed, (root / source.name / "_SUCCESS").stat().st_mtime


def wait_run(cluster: Any, known: set[str], timeout: float) -> dict[str, Any]:
    """The first run of the DAG not in ``known``, once it finished."""

    def finished() -> dict[str, Any] | None:
        new = [r for r in cluster.dag_runs(DAG_ID) if r["run_id"] not in known]
        return new[0] if new and new[0]["state"] in ("success", "failed") else None

    return cluster.wait_for(finished, timeout, interval=1.0, what=f"a new {DAG_ID} run to finish")


def task_log(cluster: Any, run_id: str, task_id: str) -> str:
    folder = cluster.home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / f"task_id={task_id}"
    attempts = sorted(folder.glob("attempt=*.log"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
    return attempts[-1].read_text(errors="replace") if attempts else ""


def epoch(value: Any) -> float | None:
    return value.timestamp() if value is not None else None


def offset(value: Any, origin: float) -> float | None:
    stamp = epoch(value)
    return None if stamp is None else stamp - origin


def analyse(cluster: Any, run: dict[str, Any], landed: float) -> dict[str, Any]:
    """Landing -> run -> each task -> decision, in seconds after ``landed``."""
    tasks: dict[str, dict[str, Any]] = {}
    decision: tuple[float | None, float | None] | None = None
    for ti in cluster.task_instances(DAG_ID, run["run_id"]):
        text = task_log(cluster, run["run_id"], ti["task_id"])
        start, end = epoch(ti["start_date"]), epoch(ti["end_date"])
        wall = end - start if start is not None and end is not None else None
        compute = task_compute(text)
        split = overhead_split(start, end, compute, step_window(text))
        tasks[ti["task_id"]] = {
            "state": ti["state"],
            "queued": offset(ti["queued_dttm"], landed),
            "start": None if start is None else start - landed,
            "end": None if end is None else end - landed,
            "wall": wall,
            "compute": compute,
            "workers": step_computes(text),
            "overhead": None if wall is None else wall - (compute or 0.0),
            **split,
        }
        decision = decision or decision_record(text)
    when, provider_s = decision or (None, None)
    promote_end = (tasks.get("promote") or {}).get("end")
    decision_s = when - landed if when is not None else promote_end
    return {
        "run_id": run["run_id"],
        "state": run["state"],
        "run_created_s": offset(run["queued_at"], landed),
        "run_started_s": offset(run["start_date"], landed),
        "run_ended_s": offset(run["end_date"], landed),
        "decision_s": decision_s,
        "decision_source": "freshness log record" if when is not None else "promote task end",
        "provider_decided_s": provider_s,
        "tasks": tasks,
    }


def unpause(cluster: Any) -> None:
    import requests

    response = requests.patch(
        f"{cluster.api_url}/api/v2/dags/{DAG_ID}", json={"is_paused": False}, timeout=30
    )
    response.raise_for_status()


def cluster_env(base: Path, mlflow_url: str, cold: bool) -> dict[str, str]:
    env = {
        "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps({"conn_type": "mlflow", "host": mlflow_url}),
        "AIRFLOW_ML_EXAMPLE_LANDING": str(base / "landing"),
        "AIRFLOW_ML_EXAMPLE_STATE": str(base / "state"),
        # Only continuous_training is unpaused: the hourly, Kubernetes and deploy DAGs stay off.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW_ML_SCRATCH_DIR": str(base / "scratch"),
        WARM_DIR_ENV: str(base / "warm"),
    }
    if cold:
        env[WARM_STEPS_ENV] = "False"
    return env


def stop_warm_servers(base: Path) -> list[int]:
    """Stop the warm step servers this run's cluster started (by their pid files); their pids."""
    folder = base / "warm"
    try:
        from airflow_ml_provider.runners.warm import stop_servers
    except ImportError:  # a provider without warm steps
        return []
    return stop_servers(folder) if folder.is_dir() else []


def landings() -> tuple[Any, Any]:
    """The demo's v1 and v2 (scripts/demo.py), so that the measured version is the demo's."""
    from support.harness import load_script

    scenario = load_script(REPO_ROOT / "scripts" / "demo.py", "ml_provider_demo").SCENARIO
    return scenario[0], scenario[1]


def champion_version(mlflow_url: str) -> str | None:
    from mlflow import MlflowClient

    with contextlib.suppress(Exception):
        return str(MlflowClient(mlflow_url).get_registered_model(MODEL_NAME).aliases.get(ALIAS))
    return None


def drive(args: argparse.Namespace, cluster: Any, base: Path, mlflow_url: str) -> dict[str, Any]:
    """Deploy, land v1 (a champion), then land v2 and analyse its run."""
    v1, v2 = landings()
    root, staging = base / "landing" / DATASET, base / "staging"
    cluster.start()
    cluster.wait_dag_parsed(DAG_ID, timeout=180)
    unpause(cluster)
    cluster.wait_watchers_running([WATCHER], timeout=180)
    log(f"cluster up; landing v1 ({v1.spec}) for a champion")
    started = time.monotonic()
    land(root, staging, v1.version, v1.spec)
    first = wait_run(cluster, set(), args.run_timeout)
    log(
        f"v1 run {first['state']} after {time.monotonic() - started:.0f} s; champion {champion_version(mlflow_url)}"
    )
    if first["state"] != "success":
        raise RuntimeError(f"the v1 run {first['run_id']} failed: no champion to evaluate v2 against")
    time.sleep(args.settle)
    landed, marker = land(root, staging, v2.version, v2.spec)
    log(f"v2 landed ({v2.spec}); waiting for its run")
    second = wait_run(cluster, {first["run_id"]}, args.run_timeout)
    result = analyse(cluster, second, landed)
    result["marker_before_landing_s"] = landed - marker
    result["champion_after"] = champion_version(mlflow_url)
    result["version"] = f"v{v2.version} {v2.spec}"
    log(f"v2 run {second['state']}; decision {fmt(result['decision_s'])} s after landing")
    return result


def one_run(args: argparse.Namespace, mode: str, index: int) -> dict[str, Any]:
    """A fresh cluster and MLflow; the measured v2 run; then the floor on the same MLflow."""
    from support.cluster import AirflowCluster
    from support.harness import MlflowServer

    base = Path(tempfile.mkdtemp(prefix=f"ml-provider-bench-loop-{mode}-"))
    log(f"{mode} run {index}: work folder {base}")
    server = MlflowServer(base / "mlflow", workers=1)
    failed = False
    try:
        server.start()
        env = cluster_env(base, server.url, cold=mode == "cold")
        cluster = AirflowCluster(base / "cluster", base / "dags", env=env, parallelism=args.parallelism)
        (base / "dags").mkdir(exist_ok=True)
        shutil.copy(EXAMPLE, base / "dags" / EXAMPLE.name)
        try:
            result = drive(args, cluster, base, server.url)
        except Exception:
            print(cluster.tails(40))
            raise
        finally:
            cluster.stop()  # the floor runs on a quiet machine
            stopped = stop_warm_servers(base)
            if stopped:
                log(f"stopped the run's warm step servers {stopped}")
        result["mode"] = mode
        result["floor"] = run_floor(server.url, result["run_id"], base)
        result["floor_s"] = result["floor"]["total_s"]
        result["floor_imports_s"] = result["floor"]["imports_s"]
        if result["decision_s"] is not None and result["floor_s"]:
            result["overhead_ratio"] = (result["decision_s"] - result["floor_s"]) / result["floor_s"]
        return result
    except Exception:
        failed = True
        raise
    finally:
        server.stop()
        if args.keep or failed:
            print(f"work folder kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


# -- the floor: the same steps as plain functions in one warm step process ----------------------


def fetch_specs(mlflow_url: str, run_id: str, workdir: Path) -> dict[str, dict[str, Any]]:
    """The spec each step task of the DAG run logged to its MLflow run (by task id)."""
    from mlflow import MlflowClient

    from airflow_ml_provider.vocabulary import (
        ARTIFACT_STEP_SPEC,
        ARTIFACT_TRAINING_SPEC,
        TAG_RUN_ID,
        TAG_TASK_ID,
    )

    client = MlflowClient(mlflow_url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        raise RuntimeError(f"MLflow has no experiment {EXPERIMENT!r}")
    specs = {}
    for task in STEP_OF:
        found = client.search_runs(
            [experiment.experiment_id],
            f"tags.`{TAG_RUN_ID}` = '{run_id}' and tags.`{TAG_TASK_ID}` = '{task}'",
        )
        if not found:
            raise RuntimeError(f"no MLflow run of task {task} in DAG run {run_id}")
        artifact = ARTIFACT_TRAINING_SPEC if task == "train" else ARTIFACT_STEP_SPEC
        path = client.download_artifacts(found[0].info.run_id, artifact, str(workdir))
        specs[task] = json.loads(Path(path).read_text())
    return specs


def run_floor(mlflow_url: str, run_id: str, base: Path) -> dict[str, Any]:
    """Run :func:`floor_main` in the step environment on the DAG run's specs; its timings."""
    from support.step_env import step_python

    work = base / "floor"
    work.mkdir(parents=True, exist_ok=True)
    specs = fetch_specs(mlflow_url, run_id, work)
    (work / "specs.json").write_text(json.dumps({"specs": specs, "scratch": str(work / "scratch")}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AIRFLOW", "TF_CONFIG"))}
    env.update(MLFLOW_TRACKING_URI=mlflow_url, MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    command = [step_python(), str(Path(__file__).resolve()), "--floor-child", str(work / "specs.json")]
    log("floor: the same steps as plain functions in one step-environment process")
    with (work / "floor.log").open("w") as out:
        done = subprocess.run(
            [*command, str(work / "timings.json")], env=env, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if done.returncode != 0:
        tail = "\n".join((work / "floor.log").read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"the floor process failed (exit {done.returncode}):\n{tail}")
    return dict(json.loads((work / "timings.json").read_text()))


def floor_main(argv: list[str]) -> int:
    """In the step environment: import once, then each step on the DAG run's spec, timed."""
    specs_path, out_path = argv
    payload = json.loads(Path(specs_path).read_text())
    specs, scratch = payload["specs"], Path(payload["scratch"])
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    computed = _ComputedHandler()
    logging.getLogger().addHandler(computed)
    started = time.perf_counter()
    from airflow_ml_provider.ml.training.step import import_tensorflow

    import_tensorflow()  # first: it sets TF_USE_LEGACY_KERAS before TensorFlow loads
    import mlflow
    import tensorflow_data_validation  # noqa: F401
    import tensorflow_model_analysis  # noqa: F401

    from airflow_ml_provider.ml.execute import execute_step
    from airflow_ml_provider.ml.registry import resolve_step

    for step in STEP_OF.values():
        resolve_step(step)
    imports = time.perf_counter() - started
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(FLOOR_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(FLOOR_EXPERIMENT)
    run_id = client.create_run(experiment_id).info.run_id
    seconds: dict[str, float] = {}

    def timed(task: str, spec: dict[str, Any]) -> dict[str, Any]:
        spec = {**spec, "output_dir": str(scratch / task)} if "output_dir" in spec else spec
        begin = time.perf_counter()
        result = execute_step(STEP_OF[task], spec)
        seconds[task] = time.perf_counter() - begin
        return result

    timed("validate", specs["validate"])
    train = {k: v for k, v in specs["train"].items() if k != "model_dir"}
    train.update(strategy="one_device", mlflow={"run_id": run_id, "experiment_id": experiment_id})
    model_uri = timed("train", train)["model_uri"]
    timed("evaluate", {**specs["evaluate"], "candidate_model_uri": model_uri})
    timed("infra_validate", {**specs["infra_validate"], "model_uri": model_uri})
    begin = time.perf_counter()
    version = mlflow.register_model(model_uri, FLOOR_MODEL)
    client.set_registered_model_alias(FLOOR_MODEL, ALIAS, version.version)
    seconds["promote"] = time.perf_counter() - begin
    client.set_terminated(run_id)
    figures = {
        "imports_s": imports,
        "steps_s": seconds,
        "computed_s": computed.seconds,
        "total_s": sum(seconds.values()),
        "python": sys.version.split()[0],
    }
    Path(out_path).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


class _ComputedHandler(logging.Handler):
    """Collects the ``Step <name> computed in N s`` records of :func:`execute_step`."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        found = COMPUTED.search(record.getMessage())
        if found:
            self.seconds[found["step"]] = float(found["seconds"])


# -- report -----------------------------------------------------------------------------------


def print_run(result: dict[str, Any], index: int) -> None:
    floor = result["floor"]
    print(
        f"\n{result['mode']} run {index}: {result['version']} landed -> decision {fmt(result['decision_s'])} s"
        f" (run {result['state']}, champion now version {result['champion_after']})"
    )
    print(f"  landing -> DAG run created   {fmt(result['run_created_s'], 2):>7} s")
    print(f"  landing -> DAG run started   {fmt(result['run_started_s'], 2):>7} s")
    columns = ("queued", "start", "end", "wall", "compute", "overhead", "before", "launch", "after")
    print(f"  {'task':<15}{'state':<8}" + "".join(f"{c:>9}" for c in (*columns, "floor")))
    tasks = result["tasks"]
    for task in sorted(tasks, key=lambda t: (tasks[t]["start"] is None, tasks[t]["start"] or 0.0)):
        row = tasks[task]
        cells = "".join(f"{fmt(row[c]):>9}" for c in columns)
        print(f"  {task:<15}{row['state'] or '-':<8}{cells}{fmt(floor['steps_s'].get(task)):>9}")
        if len(row["workers"]) > 1:
            each = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(row["workers"].items()))
            print(f"  {'':<15}compute per worker: {each}")
    print(
        f"  decision ({result['decision_source']})  {fmt(result['decision_s'])} s after landing;"
        f" the provider's own figure {fmt(result['provider_decided_s'])} s (from the _SUCCESS marker)"
    )
    steps = ", ".join(f"{k} {v:.1f}" for k, v in floor["steps_s"].items())
    print(f"  floor, one warm step process: {steps} = {fmt(floor['total_s'])} s")
    print(f"  floor imports (excluded): {fmt(floor['imports_s'])} s")
    computed = ", ".join(f"{k} {v:.1f}" for k, v in floor["computed_s"].items())
    print(f"  floor, the steps' own 'computed in': {computed}")


def print_mode(mode: str, summary: dict[str, Any]) -> None:
    print(f"\n{mode}: median of {summary['runs']} run(s)")
    print(
        f"  decision {fmt(summary['decision_s'])} s, floor {fmt(summary['floor_s'])} s,"
        f" loop overhead {fmt(summary['decision_s'] - summary['floor_s'] if summary['decision_s'] and summary['floor_s'] else None)} s"
        f" = {fmt(summary['overhead_ratio'], 2)} x the floor"
    )
    print(f"  {'task':<16}{'wall':>8}{'compute':>9}{'overhead':>9}")
    for task in PIPELINE:
        cells = [summary.get(f"{task}_{k}_s") for k in ("wall", "compute", "overhead")]
        if cells[0] is not None:
            print(f"  {task:<16}{fmt(cells[0]):>8}{fmt(cells[1]):>9}{fmt(cells[2]):>9}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="measured runs per mode (a fresh cluster each); median"
    )
    parser.add_argument(
        "--cold", action="store_true", help=f"run the cold path only ({WARM_STEPS_ENV}=False)"
    )
    parser.add_argument("--compare-cold", action="store_true", help="run the default and the cold path")
    parser.add_argument("--parallelism", type=int, default=4)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between v1's run and v2's landing")
    parser.add_argument("--run-timeout", type=float, default=600.0)
    parser.add_argument("--keep", action="store_true", help="keep the work folders (logs, MLflow store)")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON to FILE")
    args = parser.parse_args(argv)
    modes = ["warm", "cold"] if args.compare_cold else ["cold"] if args.cold else ["warm"]

    os.environ.setdefault("ML_PROVIDER_TEST_DATABASE_URL", DEFAULT_DB)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    sys.path.insert(0, str(REPO_ROOT))
    started = time.monotonic()
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs; modes {', '.join(modes)}, {args.runs} run(s) each"
    )
    print(f"load average at the start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    report: dict[str, Any] = {"modes": {}, "load_avg_start": os.getloadavg()}
    try:
        for mode in modes:
            runs = [one_run(args, mode, i + 1) for i in range(args.runs)]
            report["modes"][mode] = {"runs": runs, "median": summarise_runs(runs)}
    except Exception:
        traceback.print_exc()
        return 2
    for mode, figures in report["modes"].items():
        for i, result in enumerate(figures["runs"], 1):
            print_run(result, i)
        print_mode(mode, figures["median"])
    judged = modes[0]
    checks = goals(report["modes"][judged]["median"])
    print(f"\ngoals ({judged}, median of {args.runs} run(s)):")
    for check in checks:
        print(check.line())
    if len(modes) == 2:
        warm, cold = (report["modes"][m]["median"]["decision_s"] for m in modes)
        ratio = cold / warm if warm and cold else None
        report["cold_over_warm"] = ratio
        print(f"  cold / warm landing -> decision: {fmt(ratio, 2)} (cold {fmt(cold)} s, warm {fmt(warm)} s)")
    report["goals"] = [{**asdict(c), "passed": c.passed} for c in checks]
    report["all_pass"] = all(c.passed for c in checks)
    report["total_seconds"] = time.monotonic() - started
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"total {report['total_seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"results written to {args.json}")
    return 0 if report["all_pass"] else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--floor-child"]:
        sys.exit(floor_main(sys.argv[2:]))
    sys.exit(main())
