"""A real, small Airflow cluster (api-server, scheduler, dag-processor, triggerer) run as subprocesses.

Each component is its own ``airflow <component>`` process in its own process group, with a clean
environment (no ``AIRFLOW*`` variable inherited from the pytest session), an isolated AIRFLOW_HOME and
its own PostgreSQL metadata database. The DB helpers read that database directly with psycopg2.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import requests

from support.harness import VENV_BIN, create_database, drop_database, free_port, sqlalchemy_url
from support.step_env import step_python

T = TypeVar("T")
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
JOB_TYPES = {"scheduler": "SchedulerJob", "dag-processor": "DagProcessorJob", "triggerer": "TriggererJob"}


class ClusterError(RuntimeError):
    pass


class AirflowCluster:
    def __init__(
        self,
        workdir: Path,
        dags_folder: Path,
        *,
        db_url: str | None = None,
        env: Mapping[str, str] | None = None,
        executor: str = "LocalExecutor",
        parallelism: int = 4,
    ) -> None:
        self.workdir = Path(workdir)
        self.dags_folder = Path(dags_folder)
        self.owns_db = db_url is None
        self.db_url = db_url or create_database("airflow_cluster")
        self.home = self.workdir / "airflow_home"
        self.logs = self.workdir / "logs"
        for path in (self.home, self.logs):
            path.mkdir(parents=True, exist_ok=True)
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.startup_seconds: dict[str, float] = {}
        self.job_ids: dict[str, int] = {}  # the ``job`` row of each running component (not api-server)
        self._stopped = False
        self._down: set[str] = set()  # components stopped on purpose
        self.env = self._make_env(executor, parallelism, dict(env or {}))
        (self.workdir / "cluster.env").write_text("".join(f"export {k}={v!r}\n" for k, v in self.env.items()))

    def _make_env(self, executor: str, parallelism: int, extra: dict[str, str]) -> dict[str, str]:
        from cryptography.fernet import Fernet

        env = {k: v for k, v in os.environ.items() if not k.lstrip("_").startswith("AIRFLOW")}
        secret = secrets.token_hex(32)  # 64 bytes: PyJWT warns below that for HS512
        settings = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(self.db_url),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": executor,
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            # LocalExecutor task processes talk to the api-server's execution API (default: localhost:8080).
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__WORKERS": "1",
            # The scheduler signs task JWTs, the api-server checks them: one secret for every component.
            "AIRFLOW__API_AUTH__JWT_SECRET": secret,
            "AIRFLOW__API__SECRET_KEY": secret,
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "2",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "0",
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(self.workdir / "bundles"),
            # A graceful stop frees triggers at once; a killed triggerer's are reassigned after this threshold.
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
            # Log servers on free ports, so clusters (and a dev's own Airflow) never collide on 8793/8794.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # The steps of the cluster's tasks run in the step environment, as on a platform team's
            # cluster (docs/install.md); the components themselves run in Airflow's.
            "AIRFLOW__ML_PROVIDER__STEP_PYTHON": step_python(),
        }
        if os.environ.get("AIRFLOW_ML_WARM_DIR"):  # the test run's warm step servers, stopped at its end
            settings["AIRFLOW_ML_WARM_DIR"] = os.environ["AIRFLOW_ML_WARM_DIR"]
        return {**env, **settings, **extra}

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> AirflowCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def migrate(self, timeout: float = 300) -> None:
        result = subprocess.run(
            [str(VENV_BIN / "airflow"), "db", "migrate"],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        (self.logs / "db-migrate.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise ClusterError(f"airflow db migrate failed:\n{(result.stdout + result.stderr)[-4000:]}")

    def start(self, components: Iterable[str] = COMPONENTS, timeout: float = 180) -> AirflowCluster:
        """Migrate the DB, launch every component at once, then wait until each one is up."""
        if self._stopped:
            raise ClusterError("this cluster was stopped (its database may be gone): make a new one")
        self.migrate()
        names = list(components)
        launched = {name: self._launch(name) for name in names}
        self._wait_up(launched, timeout)
        return self

    def start_component(self, name: str, timeout: float = 180) -> None:
        self._wait_up({name: self._launch(name)}, timeout)

    def _launch(self, name: str) -> tuple[float, int]:
        if name not in COMPONENTS:
            raise ValueError(f"unknown component {name!r}; one of {COMPONENTS}")
        if self.is_running(name):
            raise ClusterError(f"{name} is already running")
        cmd = [str(VENV_BIN / "airflow"), name]
        if name == "api-server":
            cmd += ["--host", "127.0.0.1", "--port", str(self.api_port), "--workers", "1"]
        self._down.discard(name)
        baseline = self._max_job_id(JOB_TYPES[name]) if name in JOB_TYPES else 0
        with self.log_path(name).open("ab") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} starting {' '.join(cmd)}\n".encode())
            log.flush()
            self.procs[name] = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.workdir,
                start_new_session=True,
            )
        return time.monotonic(), baseline

    def _wait_up(self, launched: dict[str, tuple[float, int]], timeout: float) -> None:
        """Wait for all launched components at once; record each one's start-up time."""
        pending = dict(launched)
        query = "SELECT max(id) AS id FROM job WHERE job_type = %s AND id > %s AND state = 'running'"

        def all_up() -> bool:
            for name, (started, baseline) in list(pending.items()):
                if name == "api-server":
                    up = self._api_healthy()
                else:
                    job_id = self._query(query, (JOB_TYPES[name], baseline))[0]["id"]
                    up = job_id is not None
                    if up:
                        self.job_ids[name] = job_id
                if up:
                    self.startup_seconds[name] = time.monotonic() - started
                    del pending[name]
            return not pending

        self.wait_for(all_up, timeout, interval=0.3, what=f"{', '.join(launched)} to come up")

    def _api_healthy(self) -> bool:
        """Core API and execution API answer. The execution API app is built on its first request
        (seconds); warming it here keeps a task's first call under the 5 s client timeout."""
        with contextlib.suppress(requests.RequestException):
            return all(
                requests.get(f"{self.api_url}{path}", timeout=30).status_code == 200
                for path in ("/api/v2/monitor/health", "/execution/health")
            )
        return False

    def _max_job_id(self, job_type: str) -> int:
        rows = self._query("SELECT coalesce(max(id), 0) AS id FROM job WHERE job_type = %s", (job_type,))
        return int(rows[0]["id"])

    def is_running(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def stop_component(
        self, name: str, sig: int = signal.SIGTERM, timeout: float = 30, *, group: bool = False
    ) -> int | None:
        """Send ``sig`` to the component (its whole process group if ``group``); SIGKILL the group after
        ``timeout``; always reap leftovers of the group. Return the exit code."""
        proc = self.procs.get(name)
        if proc is None:
            return None
        self._down.add(name)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._log_note(name, f"no exit {timeout}s after signal {sig}: SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # children (task runners, log servers) left behind
        proc.wait(timeout=30)
        return proc.returncode

    def kill_component(self, name: str) -> int | None:
        return self.stop_component(name, signal.SIGKILL, timeout=30, group=True)

    def restart_component(self, name: str, sig: int = signal.SIGTERM, timeout: float = 180) -> None:
        self.stop_component(name, sig)
        self.start_component(name, timeout=timeout)

    def stop(self, grace: float = 30) -> None:
        """Stop every component (api-server last), then drop the database if this cluster created it.
        Idempotent; the cluster cannot be started again afterwards."""
        if self._stopped:
            return
        self._stopped = True
        for name in sorted(self.procs, key=lambda n: n == "api-server"):
            with contextlib.suppress(Exception):
                self.stop_component(name, timeout=grace)
        if self.owns_db:
            drop_database(self.db_url)

    # -- logs --------------------------------------------------------------------------------

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def _log_note(self, name: str, note: str) -> None:
        with self.log_path(name).open("a") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} {note}\n")

    def tail(self, component: str, lines: int = 40) -> str:
        path = self.log_path(component)
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def tails(self, lines: int = 30) -> str:
        return "\n".join(
            f"----- {name} ({'running' if self.is_running(name) else 'exited'}) -----\n{self.tail(name, lines)}"
            for name in self.procs
        )

    # -- waiting -----------------------------------------------------------------------------

    def wait_for(
        self, predicate: Callable[[], T], timeout: float, interval: float = 0.2, what: str = ""
    ) -> T:
        """Poll ``predicate`` until it returns something truthy (returned); fail early if a component
        exits on its own, and with the component log tails on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result:
                return result
            dead = [n for n, p in self.procs.items() if n not in self._down and p.poll() is not None]
            if dead:
                raise ClusterError(f"{', '.join(dead)} exited while waiting for {what}:\n{self.tails()}")
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"timed out after {timeout}s waiting for {what or predicate}:\n{self.tails()}"
                )
            time.sleep(interval)

    # -- metadata DB (read directly with psycopg2) --------------------------------------------

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        import psycopg2
        import psycopg2.extras

        conn = psycopg2.connect(self.db_url)
        try:
            conn.autocommit = True
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute(sql, tuple(params))
                return [dict(row) for row in cur.fetchall()] if cur.description else []
        finally:
            conn.close()

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self._query(
            "SELECT id, run_id, state, run_type, queued_at, start_date, end_date, conf, created_at"
            " FROM dag_run WHERE dag_id = %s ORDER BY id",
            (dag_id,),
        )

    def task_instances(self, dag_id: str, run_id: str | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT ti.run_id, ti.task_id, ti.map_index, ti.state, ti.try_number, ti.queued_dttm,"
            " ti.start_date, ti.end_date FROM task_instance ti JOIN dag_run dr"
            " ON dr.dag_id = ti.dag_id AND dr.run_id = ti.run_id WHERE ti.dag_id = %s"
        )
        params: list[Any] = [dag_id]
        if run_id is not None:
            sql += " AND ti.run_id = %s"
            params.append(run_id)
        return self._query(sql + " ORDER BY dr.id, ti.task_id, ti.map_index", params)

    def asset_events(self, asset_name: str | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT e.id, e.timestamp, e.extra, a.name AS asset_name, a.uri AS asset_uri, e.source_dag_id,"
            " e.source_run_id, e.source_task_id FROM asset_event e JOIN asset a ON a.id = e.asset_id"
        )
        if asset_name is None:
            return self._query(sql + " ORDER BY e.id")
        return self._query(sql + " WHERE a.name = %s ORDER BY e.id", (asset_name,))

    def dag_run_asset_events(self, dag_id: str) -> dict[str, list[dict[str, Any]]]:
        """run_id -> the asset events the run consumed (runs without any are absent)."""
        rows = self._query(
            "SELECT dr.run_id, e.id, e.timestamp, e.extra, a.name AS asset_name FROM dagrun_asset_event dae"
            " JOIN dag_run dr ON dr.id = dae.dag_run_id JOIN asset_event e ON e.id = dae.event_id"
            " JOIN asset a ON a.id = e.asset_id WHERE dr.dag_id = %s ORDER BY dr.id, e.id",
            (dag_id,),
        )
        result: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            result.setdefault(row.pop("run_id"), []).append(row)
        return result

    def watcher_triggers(self, asset_name: str | None = None) -> list[dict[str, Any]]:
        """Asset watchers with their trigger rows (``triggerer_id`` is set once a triggerer runs it)."""
        sql = (
            "SELECT w.name AS watcher_name, a.name AS asset_name, t.id AS trigger_id, t.classpath,"
            " t.triggerer_id FROM asset_watcher w JOIN asset a ON a.id = w.asset_id"
            " JOIN trigger t ON t.id = w.trigger_id"
        )
        if asset_name is None:
            return self._query(sql + " ORDER BY t.id")
        return self._query(sql + " WHERE a.name = %s ORDER BY t.id", (asset_name,))

    def dag_is_parsed(self, dag_id: str, watchers: Iterable[str] = ()) -> bool:
        """The DAG is in the ``dag`` table (not stale) and each named asset watcher has its trigger row."""
        if not self._query("SELECT 1 FROM dag WHERE dag_id = %s AND NOT is_stale", (dag_id,)):
            return False
        present = {row["watcher_name"] for row in self.watcher_triggers()}
        return set(watchers) <= present

    def wait_dag_parsed(self, dag_id: str, watchers: Iterable[str] = (), timeout: float = 120) -> None:
        names = list(watchers)
        self.wait_for(lambda: self.dag_is_parsed(dag_id, names), timeout, what=f"DAG {dag_id} parsed")

    def wait_watchers_running(self, watchers: Iterable[str], timeout: float = 120) -> list[dict[str, Any]]:
        """Wait until each named watcher's trigger is assigned to the triggerer this cluster runs now
        (not to a killed one whose job row still looks alive)."""
        names = set(watchers)

        def assigned() -> list[dict[str, Any]]:
            current = self.job_ids.get("triggerer") if self.is_running("triggerer") else None
            rows = [r for r in self.watcher_triggers() if r["watcher_name"] in names]
            ok = {r["watcher_name"] for r in rows if current is not None and r["triggerer_id"] == current}
            return rows if ok == names else []

        return self.wait_for(assigned, timeout, what=f"watchers {sorted(names)} assigned to the triggerer")
