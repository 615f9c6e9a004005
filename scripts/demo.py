"""The demo: the continuous-training loop on a real Airflow and a real MLflow, on this machine.

Run it with ``make demo`` (or ``make demo-serve`` to keep both UIs open afterwards). It starts:

- an ``mlflow server``: SQLite store and local artifacts in ``.demo/mlflow``;
- an embedded Airflow 3: the api-server, scheduler, dag-processor and triggerer, each its own
  process (what ``airflow standalone`` runs), on SQLite in ``.demo/airflow``, LocalExecutor, with
  the example DAGs of ``dags_examples/`` loaded (paused, except the two the demo uses);
- in the layout a cluster runs (docs/install.md): Airflow in this interpreter's environment
  (``make demo``: Python 3.12, pandas and numpy 2 or newer, no TensorFlow), every step in the step
  environment that ``--step-python`` names (``make demo``: ``.venv-steps``, Python 3.11 with the
  TensorFlow stack), through the one setting ``[ml_provider] step_python``.

Then it lands three versions of the churn dataset in ``.demo/landing`` and lets Airflow react:
the asset watcher of ``continuous_training`` starts a DAG run for each, within seconds.

- v1 bootstraps: the schema is inferred from it and its model becomes the first ``champion``;
- v2 (six times the rows) is validated, trained, evaluated against v1's champion, blessed and
  promoted; ``deploy_champion`` runs on each promotion and guards the new champion's live AUC;
- v2 does badly on live traffic (the demo's stand-in for serving logs its ``live_auc`` to MLflow
  below the guard's 0.7): its guard rolls ``champion`` back to v1, and ``deploy_champion`` runs
  again, for v1;
- v3 renders ``income`` as text (a schema break): validation stops the run, nothing is trained.

It prints each task's progress, then a summary table, the guards' verdicts, the champion's alias
history, the Airflow and MLflow addresses (the Models page among them) and the Airflow login, and
stops everything (``--serve``: keeps serving until Ctrl-C). It exits non-zero if the story does not
come out as above. Every component's log is in ``.demo/logs``. A new run starts from an empty
``.demo``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import requests

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".demo"
LOGS = STATE / "logs"
BIN = Path(sys.executable).parent
DAG_ID = "continuous_training"
DEPLOY_DAG_ID = "deploy_champion"
WATCHER = "churn_training_data_versions"
EXPERIMENT = "continuous_training"
MODEL_NAME = "churn"
USER = "admin"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
PIPELINE = ("validate", "train", "evaluate", "infra_validate", "promote")
RUN_TIMEOUT = 420.0  # one DAG run, landing to end; a full run takes about 2-3 minutes here
# deploy_champion's guard, shortened for the demo (the example's default: 15 min, every 30 s).
GUARD_WINDOW = 10
GUARD_INTERVAL = 2
SERVING_EXPERIMENT = f"{MODEL_NAME}_serving"  # where the stand-in for serving logs live_auc
T = TypeVar("T")


@dataclass(frozen=True)
class Landing:
    version: int
    spec: dict[str, Any]  # generate_dataset knobs for this version
    story: str
    expect_promoted: bool
    live_auc: float = 0.0  # what serving measures once the version is champion


SCENARIO = (
    Landing(1, {"rows": 1000}, "first data: bootstraps the schema and the first champion", True, 0.82),
    Landing(2, {"rows": 6000}, "six times the rows: better offline, but worse live", True, 0.56),
    Landing(3, {"rows": 6000, "type_change": "income"}, "a schema break: income arrives as text", False),
)
# The champion's alias history the story expects: (kind, from, to), oldest first.
EXPECTED_HISTORY = [("promotion", None, "1"), ("promotion", "1", "2"), ("rollback", "2", "1")]


class DemoError(RuntimeError):
    """The demo could not go on; the message says what failed and which log to read."""


STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[demo {time.monotonic() - STARTED:5.0f}s] {message}", flush=True)


def free_port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, check: Callable[[], None]) -> T:
    """Poll ``predicate`` until it returns something truthy; ``check`` raises if a process died."""
    deadline = time.monotonic() + timeout
    while True:
        check()
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


# -- processes ------------------------------------------------------------------------------


@dataclass
class Processes:
    """Long-running child processes, each in its own process group with its log in .demo/logs."""

    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        with (LOGS / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=STATE, start_new_session=True
            )

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise DemoError(f"{name} exited (code {proc.returncode}):\n{tail(name)}")

    def stop(self, grace: float = 20) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not leave the servers running
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # what is left of the group (task runners)
            proc.wait()


def tail(name: str, lines: int = 25) -> str:
    path = LOGS / f"{name}.log"
    text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
    return "\n".join(f"    {line}" for line in text) + f"\n    (full log: {path})"


def mlflow_command(port: int) -> list[str]:
    store = STATE / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    return [
        *(str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        *("--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}"),
        *("--artifacts-destination", str(store / "artifacts")),
    ]


def airflow_env(api_url: str, mlflow_url: str, step_python: str | None) -> dict[str, str]:
    """
    One environment for every Airflow process: SQLite, LocalExecutor, the examples, the demo's
    MLflow, and the step environment (``step_python``; None: the steps run in Airflow's own).
    """
    from cryptography.fernet import Fernet

    home = STATE / "airflow"
    secret = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.lstrip("_").startswith(("AIRFLOW", "MLFLOW_"))}
    return {
        **env,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags_examples"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__API__BASE_URL": api_url,
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API_AUTH__JWT_SECRET": secret,
        "AIRFLOW__API__SECRET_KEY": secret,
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(STATE / "bundles"),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port(8793)),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port(8794)),
        "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps({"conn_type": "mlflow", "host": mlflow_url}),
        **({"AIRFLOW__ML_PROVIDER__STEP_PYTHON": step_python} if step_python else {}),
        # Read by dags_examples/continuous_training.py when it is parsed.
        "AIRFLOW_ML_EXAMPLE_LANDING": str(STATE / "landing"),
        "AIRFLOW_ML_EXAMPLE_STATE": str(STATE / "pipeline"),
        "AIRFLOW_ML_EXAMPLE_GUARD_WINDOW": str(GUARD_WINDOW),
        "AIRFLOW_ML_EXAMPLE_GUARD_INTERVAL": str(GUARD_INTERVAL),
    }


def login_password() -> str:
    """Write the simple auth manager's password file before the api-server starts (it keeps it)."""
    password = secrets.token_urlsafe(9)
    home = STATE / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({USER: password}) + "\n")
    return password


def migrate(env: dict[str, str]) -> None:
    with (LOGS / "db-migrate.log").open("w") as log:
        result = subprocess.run(
            [str(BIN / "airflow"), "db", "migrate"], env=env, cwd=STATE, stdout=log, stderr=subprocess.STDOUT
        )
    if result.returncode != 0:
        raise DemoError(f"airflow db migrate failed:\n{tail('db-migrate')}")


# -- Airflow's REST API and database -----------------------------------------------------------


class Airflow:
    def __init__(self, url: str, password: str) -> None:
        self.url, self.password = url, password
        self.session = requests.Session()

    def healthy(self) -> bool:
        with contextlib.suppress(requests.RequestException):
            return all(
                requests.get(f"{self.url}{path}", timeout=30).status_code == 200
                for path in ("/api/v2/monitor/health", "/execution/health")
            )
        return False

    def login(self) -> None:
        response = requests.post(
            f"{self.url}/auth/token", json={"username": USER, "password": self.password}, timeout=30
        )
        if response.status_code != 201:
            raise DemoError(f"Airflow login as {USER!r} failed: {response.status_code} {response.text[:300]}")
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def get(self, path: str, **params: Any) -> Any:
        response = self.session.get(f"{self.url}/api/v2{path}", params=params, timeout=30)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def unpause(self, dag_id: str) -> None:
        response = self.session.patch(
            f"{self.url}/api/v2/dags/{dag_id}", json={"is_paused": False}, timeout=30
        )
        response.raise_for_status()

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        body = self.get(f"/dags/{dag_id}/dagRuns", order_by="run_after", limit=100)
        return list(body["dag_runs"]) if body else []

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        body = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {ti["task_id"]: ti["state"] or "none" for ti in (body or {}).get("task_instances", [])}

    def consumed_versions(self, dag_id: str, run_id: str) -> list[str]:
        body = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/upstreamAssetEvents") or {}
        payloads = [(e.get("extra") or {}).get("payload") or {} for e in body.get("asset_events", [])]
        return [str(p["version"]) for p in payloads if "version" in p]


def watcher_running(name: str) -> bool:
    """The watcher's trigger is assigned to a triggerer (read from the embedded SQLite DB)."""
    db = STATE / "airflow" / "airflow.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
        try:
            row = conn.execute(
                "SELECT t.triggerer_id FROM asset_watcher w JOIN trigger t ON t.id = w.trigger_id"
                " WHERE w.name = ?",
                (name,),
            ).fetchone()
        except sqlite3.OperationalError:  # locked, or not migrated yet: ask again
            return False
    return row is not None and row[0] is not None


# -- the story ------------------------------------------------------------------------------


def land(landing: Landing) -> str:
    from airflow_ml_provider.ml.datagen import generate_dataset

    root = STATE / "landing" / "churn_training_data"
    written = generate_dataset({"root": str(root), "versions": [landing.version], **landing.spec})
    return str(written["versions"][0]["version"])


def follow_run(airflow: Airflow, known: set[str], label: str, check: Callable[[], None]) -> dict[str, Any]:
    """Wait for the DAG run the landing starts, print its tasks' progress, return it once finished."""

    def new_run() -> dict[str, Any] | None:
        return next((r for r in airflow.dag_runs(DAG_ID) if r["dag_run_id"] not in known), None)

    run = wait_for(new_run, 120, f"the asset watcher to start a {DAG_ID} run for {label}", check)
    run_id = run["dag_run_id"]
    say(f"{label}: DAG run {run_id} started by the asset event")
    seen: dict[str, str] = {}
    last_news = time.monotonic()
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        check()
        states = airflow.task_states(DAG_ID, run_id)
        for task in PIPELINE:
            state = states.get(task, "none")
            if state not in ("none", "scheduled", "queued") and seen.get(task) != state:
                say(f"{label}:   {task:<15} {state}")
                seen[task] = state
                last_news = time.monotonic()
        run = next(r for r in airflow.dag_runs(DAG_ID) if r["dag_run_id"] == run_id)
        if run["state"] in ("success", "failed"):
            say(f"{label}: DAG run {run['state']}")
            return run
        if time.monotonic() - last_news > 30:
            running = [t for t, s in states.items() if s == "running"] or ["(scheduling)"]
            say(f"{label}:   ... still {', '.join(running)}")
            last_news = time.monotonic()
        if time.monotonic() > deadline:
            raise DemoError(f"{label}: DAG run {run_id} not finished after {RUN_TIMEOUT:.0f} s")
        time.sleep(2)


def task_run(client: Any, experiment_id: str, run_id: str, task_id: str) -> Any:
    runs = client.search_runs(
        [experiment_id], f"tags.`airflow.run_id` = '{run_id}' and tags.`airflow.task_id` = '{task_id}'"
    )
    return runs[0] if runs else None


def read_json_artifact(client: Any, run: Any, path: str) -> Any:
    with contextlib.suppress(Exception):
        return json.loads(
            Path(client.download_artifacts(run.info.run_id, path, str(STATE / "tmp"))).read_text()
        )
    return None


def describe_validation(client: Any, experiment_id: str, run_id: str, state: str) -> str:
    run = task_run(client, experiment_id, run_id, "validate")
    if state == "success":
        return "passed"
    anomalies = (read_json_artifact(client, run, "validation/anomalies.json") or {}).get("anomalyInfo", {})
    if anomalies:
        first, info = next(iter(sorted(anomalies.items())))
        return f"stopped: {len(anomalies)} anomal{'y' if len(anomalies) == 1 else 'ies'} ({first}: {info.get('shortDescription', '?')})"
    return state


def describe_blessing(client: Any, experiment_id: str, run_id: str, state: str) -> str:
    if state not in ("success", "skipped"):
        return state
    run = task_run(client, experiment_id, run_id, "evaluate")
    record = read_json_artifact(client, run, "evaluation/record.json") if run else None
    if not record:
        return "not evaluated"
    verdict = "blessed" if record["blessed"] else "not blessed"
    auc = (record.get("metrics") or {}).get("auc")
    if not isinstance(auc, float):
        return verdict
    baseline = record.get("baseline")
    if not baseline:
        return f"{verdict}: AUC {auc:.3f} (first model)"
    champion_auc = (record.get("baseline_metrics") or {}).get("auc")
    than = f" vs {champion_auc:.3f}" if isinstance(champion_auc, float) else ""
    return f"{verdict}: AUC {auc:.3f}{than} of champion v{baseline['version']}"


def describe_freshness(client: Any, experiment_id: str, run_id: str) -> str:
    """Seconds from the version's completion to each stage (the parent run's freshness metrics)."""
    runs = client.search_runs(
        [experiment_id], f"tags.`airflow.run_id` = '{run_id}' and tags.`airflow.role` = 'dag_run'"
    )
    if not runs:
        return "-"
    metrics = runs[0].data.metrics
    parts = [
        f"{label} {metrics[f'freshness.version_to_{stage}_seconds']:.0f}s"
        for stage, label in (("run_started", "run"), ("trained", "trained"), ("decided", "decided"))
        if f"freshness.version_to_{stage}_seconds" in metrics
    ]
    return ", ".join(parts) or "-"


def champion(client: Any) -> str:
    with contextlib.suppress(Exception):
        return f"v{client.get_registered_model(MODEL_NAME).aliases['champion']}"
    return "none"


class Serving(threading.Thread):
    """
    The demo's stand-in for serving: every second, the AUC it "measures on labelled live traffic"
    for the version ``champion`` points at (``Landing.live_auc``), logged as serving would log it
    to MLflow: experiment ``churn_serving``, one run per version tagged ``model_name`` and
    ``model_version``, metric ``live_auc``. deploy_champion's guard reads it there.
    """

    def __init__(self, mlflow_url: str) -> None:
        super().__init__(name="serving", daemon=True)
        self.mlflow_url = mlflow_url
        self.stopped = threading.Event()
        self.live_auc = {str(landing.version): landing.live_auc for landing in SCENARIO}

    def run(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.mlflow_url)
        runs: dict[str, str] = {}
        step = 0
        while not self.stopped.wait(1.0):
            with contextlib.suppress(Exception):  # no model yet; the server busy: next second
                version = client.get_registered_model(MODEL_NAME).aliases.get("champion")
                if version is None:
                    continue
                if version not in runs:
                    found = client.get_experiment_by_name(SERVING_EXPERIMENT)
                    experiment_id = (
                        found.experiment_id if found else client.create_experiment(SERVING_EXPERIMENT)
                    )
                    tags = {"model_name": MODEL_NAME, "model_version": version}
                    runs[version] = client.create_run(
                        experiment_id, tags=tags, run_name=f"serving v{version}"
                    ).info.run_id
                step += 1
                noise = ((step * 7) % 5 - 2) / 200  # +-0.01: live numbers move a little
                client.log_metric(
                    runs[version], "live_auc", self.live_auc.get(version, 0.8) + noise, step=step
                )


def alias_history(env: dict[str, str]) -> list[dict[str, Any]]:
    """``MlflowHook().alias_history("churn")`` (oldest first), as JSON-able dicts."""
    os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = env["AIRFLOW_CONN_MLFLOW_DEFAULT"]
    from airflow_ml_provider.hooks.mlflow import MlflowHook

    return [entry.as_dict() for entry in MlflowHook().alias_history(MODEL_NAME)]


def settle_champions(rows: list[dict[str, str]], history: list[dict[str, Any]]) -> None:
    """Each row's "champion after": where that DAG run's own promotion left it (the guard's later
    rollback has its own lines), read from the alias history instead of racing the guard."""
    current = "none"
    for row in rows:
        run_id = row["DAG run"].rsplit(" (", 1)[0]
        moves = [e for e in history if e.get("dag_id") == DAG_ID and e.get("run_id") == run_id]
        if moves:
            current = f"v{moves[-1]['to_version']}"
        row["champion after"] = current


def guard_verdicts(client: Any) -> list[dict[str, str]]:
    """deploy_champion's guards, oldest first: the version, the outcome, why (their MLflow runs' tags)."""
    from airflow_ml_provider.vocabulary import (
        TAG_GUARD_OUTCOME,
        TAG_GUARD_REASON,
        TAG_GUARD_ROLLED_BACK_TO,
        TAG_GUARD_VERSION,
    )

    experiment = client.get_experiment_by_name(DEPLOY_DAG_ID)
    if experiment is None:
        return []
    runs = client.search_runs(
        [experiment.experiment_id], "tags.`airflow.task_id` = 'guard'", order_by=["attributes.start_time ASC"]
    )
    return [
        {
            "version": r.data.tags.get(TAG_GUARD_VERSION, "?"),
            "outcome": r.data.tags.get(TAG_GUARD_OUTCOME, r.info.status.lower()),
            "rolled_back_to": r.data.tags.get(TAG_GUARD_ROLLED_BACK_TO, ""),
            "reason": r.data.tags.get(TAG_GUARD_REASON, ""),
        }
        for r in runs
    ]


def say_guards(guards: list[dict[str, str]]) -> None:
    for guard in guards:
        verdict = guard["outcome"]
        if guard["rolled_back_to"]:
            verdict += f" to v{guard['rolled_back_to']}: {guard['reason']}"
        say(f"  guard of v{guard['version']}: {verdict}")


def print_history(history: list[dict[str, Any]]) -> None:
    """The champion's alias history, as ``MlflowHook().alias_history("churn")`` returns it."""
    print(f'\nChampion history of {MODEL_NAME!r} (MlflowHook().alias_history("{MODEL_NAME}")):')
    for e in history:
        move = f"{'v' + str(e['from_version']) if e['from_version'] else 'none'} -> v{e['to_version']}"
        by = "/".join(str(e[k]) for k in ("dag_id", "task_id") if e.get(k)) or e.get("actor", "")
        reason = f"  {e['reason']}" if e.get("reason") else ""
        print(f"  {e['epoch']:>2}  {str(e['at'])[:19]}  {e['kind']:<9}  {move:<12}  {by}{reason}")
    print()


def check_guard(history: list[dict[str, Any]], guards: list[dict[str, str]], final: str) -> list[str]:
    """What did not come out as the guard's part of the story says (empty when it did)."""
    problems = []
    moves = [(e["kind"], e["from_version"], e["to_version"]) for e in history]
    if moves != EXPECTED_HISTORY:
        problems.append(f"champion history is {moves}, expected {EXPECTED_HISTORY}")
    if final != "v1":
        problems.append(f"champion at the end is {final}, expected v1 (v2 rolled back)")
    if not any(g["version"] == "2" and g["outcome"] == "rolled_back" for g in guards):
        problems.append(f"no guard rolled v2 back: {[(g['version'], g['outcome']) for g in guards]}")
    failed = [g for g in guards if g["outcome"] not in ("healthy", "moved", "rolled_back")]
    if failed:
        problems.append(f"guards that did not end well: {failed}")
    return problems


def check_models_page(airflow: Airflow, final: str, history: list[dict[str, Any]]) -> list[str]:
    """Read the Models page's data as the logged-in user; say what it shows; problems if it differs."""
    response = airflow.session.get(f"{airflow.url}/ml-models/api/models/{MODEL_NAME}", timeout=60)
    if not response.ok:
        return [f"the Models page answered {response.status_code}: {response.text[:300]}"]
    page = response.json()
    rollbacks = [m for m in page["rollbacks"] if m["kind"] == "rollback"]
    say(
        f"  it shows {MODEL_NAME}: champion v{page['champion']}, {len(page['versions'])} versions, "
        f"{len(page['history'])} moves, {len(rollbacks)} rollback"
    )
    problems = []
    if f"v{page['champion']}" != final or len(page["history"]) != len(history) or len(rollbacks) != 1:
        problems.append(f"the Models page shows champion v{page['champion']}, {len(page['history'])} moves")
    return problems


def print_table(rows: list[dict[str, str]]) -> None:
    columns = ("version", "DAG run", "validation", "blessing", "champion after", "freshness")
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    print()
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns))
    print()


def check_story(rows: list[dict[str, str]]) -> list[str]:
    """What did not come out as SCENARIO says (empty when the demo told its story)."""
    problems = []
    expected = "none"
    for landing, row in zip(SCENARIO, rows, strict=True):
        if landing.expect_promoted:
            expected = f"v{landing.version}"
        if row["champion after"] != expected:
            problems.append(
                f"v{landing.version}: champion after is {row['champion after']}, expected {expected}"
            )
        if not landing.expect_promoted and not row["validation"].startswith("stopped"):
            problems.append(
                f"v{landing.version}: validation {row['validation']!r}, expected it to stop the run"
            )
    return problems


def lineage_url(api_url: str, run_id: str) -> str:
    """The DAG run's "ML lineage" tab in the Airflow UI (the provider's plugin)."""
    return f"{api_url}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/plugin/ml-lineage"


def say_lineage_links(api_url: str, rows: list[dict[str, str]]) -> None:
    """Each run's "ML lineage" tab: dataset version -> validation -> ... -> promotion."""
    for row in rows:
        run_id = row["DAG run"].rsplit(" (", 1)[0]
        say(f"  ML lineage of {row['version'].split()[0]}: {lineage_url(api_url, run_id)}")


def run_story(airflow: Airflow, mlflow_url: str, check: Callable[[], None]) -> list[dict[str, str]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_url)
    rows = []
    known = {r["dag_run_id"] for r in airflow.dag_runs(DAG_ID)}
    for landing in SCENARIO:
        label = f"v{landing.version}"
        version = land(landing)
        say(f"{label}: landed version={version} ({landing.story})")
        run = follow_run(airflow, known, label, check)
        known.add(run["dag_run_id"])
        states = airflow.task_states(DAG_ID, run["dag_run_id"])
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else "0"
        consumed = airflow.consumed_versions(DAG_ID, run["dag_run_id"])
        rows.append(
            {
                "version": f"{label} ({'/'.join(consumed) or version})",
                "DAG run": f"{run['dag_run_id']} ({run['state']})",
                "validation": describe_validation(
                    client, experiment_id, run["dag_run_id"], states.get("validate", "none")
                ),
                "blessing": describe_blessing(
                    client, experiment_id, run["dag_run_id"], states.get("evaluate", "none")
                ),
                "champion after": champion(client),
                "freshness": describe_freshness(client, experiment_id, run["dag_run_id"]),
            }
        )
    return rows


def wait_deployments(airflow: Airflow, moves: int, check: Callable[[], None]) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        runs = airflow.dag_runs(DEPLOY_DAG_ID)
        finished = [r for r in runs if r["state"] in ("success", "failed")]
        return finished if len(finished) >= moves and len(finished) == len(runs) else None

    return wait_for(done, 180, f"{DEPLOY_DAG_ID} to run once per move of the champion, guard included", check)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# -- main -----------------------------------------------------------------------------------


def describe_layout(step_python: str | None) -> str:
    """
    One line on where Airflow and the steps run, after checking the step environment answers.

    :raises DemoError: ``step_python`` does not run, or cannot import the TensorFlow stack.
    """
    import numpy
    import pandas

    here = f"Python {sys.version.split()[0]}, pandas {pandas.__version__}, numpy {numpy.__version__}"
    if not step_python:
        return f"Airflow and the steps: {sys.executable} ({here})"
    probe = (
        "import sys, tensorflow_data_validation, tensorflow_model_analysis, pandas; "
        "print(sys.version.split()[0], pandas.__version__)"
    )
    done = subprocess.run([step_python, "-c", probe], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DemoError(
            f"the step environment {step_python} cannot import the TensorFlow stack: build it with "
            f"`make step-env`.\n{done.stderr.strip()[-2000:]}"
        )
    version, step_pandas = done.stdout.split()
    return (
        f"Airflow: {sys.executable} ({here}); "
        f"steps: {step_python} (Python {version}, pandas {step_pandas}, the TensorFlow stack)"
    )


def main() -> int:
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # this process's downloads
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", action="store_true", help="keep Airflow and MLflow running until Ctrl-C")
    parser.add_argument("--airflow-port", type=int, default=8080, help="default 8080, or a free port")
    parser.add_argument("--mlflow-port", type=int, default=5000, help="default 5000, or a free port")
    parser.add_argument(
        "--step-python",
        help="the step environment's interpreter ([ml_provider] step_python; make demo: .venv-steps). "
        "Default: the steps run in this interpreter's environment, which then needs the TensorFlow stack",
    )
    args = parser.parse_args()

    if STATE.exists():
        say(f"removing the previous demo's state in {STATE}")
        shutil.rmtree(STATE)
    LOGS.mkdir(parents=True)
    api_url = f"http://127.0.0.1:{free_port(args.airflow_port)}"
    mlflow_url = f"http://127.0.0.1:{free_port(args.mlflow_port)}"
    env = airflow_env(api_url, mlflow_url, args.step_python and str(Path(args.step_python).absolute()))
    password = login_password()
    procs = Processes()
    serving = Serving(mlflow_url)
    signal.signal(signal.SIGTERM, _interrupt)  # stop everything as Ctrl-C does
    try:
        say(describe_layout(args.step_python))
        say("starting mlflow server (SQLite store, local artifacts) ...")
        mlflow_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        procs.start("mlflow", mlflow_command(int(mlflow_url.rsplit(":", 1)[1])), mlflow_env)
        say("migrating the Airflow metadata DB (SQLite) ...")
        migrate(env)
        port = api_url.rsplit(":", 1)[1]
        procs.start(
            "api-server",
            [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", port, "--workers", "1"],
            env,
        )
        for name in COMPONENTS[1:]:
            procs.start(name, [str(BIN / "airflow"), name], env)
        say(f"starting Airflow ({', '.join(COMPONENTS)}) ...")
        airflow = Airflow(api_url, password)

        def mlflow_up() -> bool:
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"{mlflow_url}/health", timeout=5).ok
            return False

        wait_for(lambda: airflow.healthy() and mlflow_up(), 240, "Airflow and MLflow to answer", procs.check)
        airflow.login()
        say(f"Airflow up at {api_url}, MLflow up at {mlflow_url}")
        for dag_id in (DAG_ID, DEPLOY_DAG_ID):
            path = f"/dags/{dag_id}"
            wait_for(partial(airflow.get, path), 180, f"DAG {dag_id} to be parsed", procs.check)
            airflow.unpause(dag_id)
        say(
            f"unpaused {DAG_ID} and {DEPLOY_DAG_ID}; waiting for the asset watcher to run in the triggerer ..."
        )
        wait_for(lambda: watcher_running(WATCHER), 180, f"asset watcher {WATCHER}", procs.check)
        serving.start()
        say(
            f"serving stand-in: logs live_auc of the champion every second to MLflow experiment {SERVING_EXPERIMENT}"
        )
        rows = run_story(airflow, mlflow_url, procs.check)
        # One deploy_champion run per move of the champion: each promotion, and the guard's rollback.
        deployments = wait_deployments(airflow, len(EXPECTED_HISTORY), procs.check)
        serving.stopped.set()
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=mlflow_url)
        history = alias_history(env)
        settle_champions(rows, history)
        guards = guard_verdicts(client)
        final = champion(client)
        print_table(rows)
        say(
            f"{DEPLOY_DAG_ID} runs (one per move of the champion): {', '.join(r['state'] for r in deployments)}; "
            f"their guards (live_auc < 0.7 in 3 checks every {GUARD_INTERVAL} s rolls back):"
        )
        say_guards(guards)
        say(f"champion now: {final}")
        print_history(history)
        say(f"Airflow UI: {api_url}/dags/{DAG_ID}  (login: {USER} / {password})")
        say(f"  Models page (champion timeline, rollbacks): {api_url}/ml-models/models")
        models_page = check_models_page(airflow, final, history)
        say_lineage_links(api_url, rows)
        experiment = requests.get(
            f"{mlflow_url}/api/2.0/mlflow/experiments/get-by-name",
            params={"experiment_name": EXPERIMENT},
            timeout=10,
        ).json()["experiment"]["experiment_id"]
        say(
            f"MLflow UI:  {mlflow_url}/#/experiments/{experiment}  (models: {mlflow_url}/#/models/{MODEL_NAME})"
        )
        say(f"logs: {LOGS}")
        problems = check_story(rows) + check_guard(history, guards, final) + models_page
        for problem in problems:
            say(f"UNEXPECTED: {problem}")
        if args.serve:
            say("serving Airflow and MLflow; Ctrl-C to stop")
            while True:
                procs.check()
                time.sleep(2)
        return 1 if problems else 0
    except KeyboardInterrupt:
        say("stopping")
        return 0
    except (DemoError, requests.RequestException) as err:
        say(f"FAILED: {err}")
        return 1
    finally:
        serving.stopped.set()
        procs.stop()
        say("stopped Airflow and MLflow")


if __name__ == "__main__":
    sys.exit(main())
