"""Test harness: a real mlflow server, PostgreSQL databases and a DAG runner.

Everything here starts real processes or talks to real services; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

VENV_BIN = Path(sys.executable).parent
DATABASE_URL_ENV = "ML_PROVIDER_TEST_DATABASE_URL"
AUTH_ADMIN_PASSWORD = "admin-pw-123"  # admin of the basic-auth test server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- PostgreSQL -------------------------------------------------------------------------------


def postgres_base_url() -> str | None:
    """The server named by ML_PROVIDER_TEST_DATABASE_URL (e.g. postgresql://postgres@127.0.0.1/postgres)."""
    return os.environ.get(DATABASE_URL_ENV) or None


def _with_database(url: str, database: str, driver: str | None = None) -> str:
    parts = urlsplit(url)
    scheme = parts.scheme.split("+")[0]
    if driver:
        scheme = f"{scheme}+{driver}"
    return urlunsplit((scheme, parts.netloc, f"/{database}", parts.query, ""))


def create_database(prefix: str) -> str:
    """Create a fresh, uniquely named database on the test server; return its plain URL."""
    import psycopg2

    base = postgres_base_url()
    assert base, f"{DATABASE_URL_ENV} is not set"
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(_with_database(base, "postgres"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return _with_database(base, name)


def drop_database(url: str) -> None:
    import psycopg2

    name = urlsplit(url).path.lstrip("/")
    conn = psycopg2.connect(_with_database(url, "postgres"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def sqlalchemy_url(url: str) -> str:
    """psycopg2 driver URL for SQLAlchemy users (Airflow, MLflow)."""
    return _with_database(url, urlsplit(url).path.lstrip("/"), driver="psycopg2")


# -- MLflow server ----------------------------------------------------------------------------


class MlflowServer:
    """A real ``mlflow server`` subprocess on a free port with its own store and artifact root."""

    def __init__(
        self,
        workdir: Path,
        *,
        backend_store_uri: str | None = None,
        basic_auth_admin_password: str | None = None,
        workers: int = 2,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.backend_store_uri = backend_store_uri or f"sqlite:///{workdir / 'mlflow.db'}"
        self.artifacts = workdir / "artifacts"
        self.basic_auth_admin_password = basic_auth_admin_password
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "server.log"

    def start(self, timeout: float = 120.0) -> MlflowServer:
        cmd = [
            str(VENV_BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--backend-store-uri",
            self.backend_store_uri,
            "--artifacts-destination",
            str(self.artifacts),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        # No GenAI job runner: it starts several more processes that import MLflow (about 20 s of
        # CPU per server here) for work these tests never ask for.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        if self.basic_auth_admin_password:
            ini = self.workdir / "basic_auth.ini"
            ini.write_text(
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = sqlite:///{self.workdir / 'auth.db'}\n"
                "admin_username = admin\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            )
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
            env["MLFLOW_AUTH_ADMIN_PASSWORD"] = self.basic_auth_admin_password
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = uuid.uuid4().hex
            cmd += ["--app-name", "basic-auth"]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir, start_new_session=True
        )
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"mlflow server not healthy after {timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

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

    def connection_json(self, **fields: Any) -> str:
        import json

        return json.dumps({"conn_type": "mlflow", "host": self.url, **fields})


# -- scripts --------------------------------------------------------------------------------


def load_script(path: Path, name: str) -> Any:
    """Import a script of the repository (scripts/, benchmarks/) as module ``name``, for its unit tests."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# -- Airflow ----------------------------------------------------------------------------------


def load_dag(dag_id: str, path: Path | None = None) -> Any:
    """Parse the test or example DAG files as the DAG processor does; fail on any import error."""
    from airflow.dag_processing.dagbag import DagBag

    folder = path or Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    bag = DagBag(dag_folder=str(folder))
    assert not bag.import_errors, bag.import_errors
    assert dag_id in bag.dags, f"{dag_id} not among {sorted(bag.dags)}"
    return bag.dags[dag_id]


def run_dag(dag: Any, *, conf: dict[str, Any] | None = None, expect: str | None = "success") -> Any:
    """Run ``dag`` once with ``dag.test()``; check the run's state; return the DagRun."""
    dag_run = dag.test(run_conf=conf)
    if expect is not None:
        assert str(dag_run.state) == expect, (
            f"DAG run {dag_run.run_id} is {dag_run.state}: {task_states(dag_run)}"
        )
    return dag_run


def task_states(dag_run: Any) -> dict[str, str]:
    return {
        (ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"): str(ti.state)
        for ti in dag_run.get_task_instances()
    }


def task_xcom(dag_run: Any, task_id: str) -> Any:
    """The return value of ``task_id`` in ``dag_run`` (an unmapped task)."""
    ti = next(t for t in dag_run.get_task_instances() if t.task_id == task_id)
    return ti.xcom_pull(task_ids=task_id)


def task_mlflow_run(client: Any, experiment_name: str, dag_run: Any, task_id: str) -> Any:
    """The MLflow run of ``task_id`` in ``dag_run``, in the experiment ``experiment_name`` (exactly one)."""
    experiment = client.get_experiment_by_name(experiment_name)
    (run,) = client.search_runs(
        [experiment.experiment_id],
        f"tags.`airflow.run_id` = '{dag_run.run_id}' and tags.`airflow.task_id` = '{task_id}'",
    )
    return run


# -- parallel task processes ------------------------------------------------------------------


def start_task_runs_in_process(
    barrier: Any, conn_json: str, dag_id: str, run_ids: list[str], map_index: int, out: Any
) -> None:
    """Child process body: for each DAG run, wait at the barrier, then start and end one mapped task's run."""
    os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = conn_json
    from airflow_ml_provider.hooks.mlflow import MlflowHook
    from airflow_ml_provider.tracking import TaskIdentity, end_task_run, start_task_run

    hook = MlflowHook()
    hook.client.search_experiments(max_results=1)  # connect before racing
    for run_id in run_ids:
        identity = TaskIdentity(dag_id=dag_id, run_id=run_id, task_id="mapped", map_index=map_index)
        barrier.wait(timeout=120)
        run = start_task_run(hook, identity)
        end_task_run(run, identity, success=True)
        out.put((run_id, map_index, run.parent_run_id, run.run_id))


# -- task logs -------------------------------------------------------------------------------------

# What a clean task log must not hold: an ERROR or CRITICAL record (Airflow's structlog console
# "[error    ]", a step's or worker's stdlib "ERROR name: ...", TensorFlow/absl's "E1207 ..." or
# "E tensorflow/..."), or a traceback.
_PROBLEM_LINE = re.compile(
    r"\[(error|critical|exception)\s*\]"
    r"|(^|[\]\s])(ERROR|CRITICAL|FATAL)[\s:]"
    r"|(^|[\]\s])[EF]\d{4} \d\d:\d\d:\d\d"
    r"|(^|[\]\s:])[EF] [\w./-]+\.(cc|h|py):\d+\]?"
    r"|Traceback \(most recent call last\)"
)


_PROBLEM_LEVELS = {"error", "critical", "fatal", "exception"}


def _record_problem(record: dict[str, Any]) -> bool:
    """A JSON record of an Airflow task log file: ERROR or above, or a traceback (structured, or as
    text: a child process's traceback relayed line by line)."""
    if str(record.get("level", "")).lower() in _PROBLEM_LEVELS:
        return True
    if any(record.get(key) for key in ("exception", "error_detail", "exc_info")):
        return True
    return "Traceback (most recent call last)" in str(record.get("event", ""))


def log_problems(text: str) -> list[str]:
    """
    The lines of a task log that are errors or tracebacks: text (``dag.test()`` writes it to
    stdout) or JSON lines (the task log files of a real executor, one record a line).
    """
    problems = []
    for line in text.splitlines():
        record = None
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
        if isinstance(record, dict):
            if _record_problem(record):
                problems.append(line)
        elif _PROBLEM_LINE.search(line):
            problems.append(line)
    return problems


def asset_event_extras(asset_name: str, run_id: str) -> list[dict[str, Any]]:
    """The extras of the events a DAG run emitted for the asset ``asset_name`` (metadata DB)."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == asset_name, AssetEvent.source_run_id == run_id)
            .all()
        )
        return [dict(row.extra or {}) for row in rows]
