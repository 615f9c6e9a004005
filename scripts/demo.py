"""The demo: a real Airflow DAG run whose every task is recorded in a local MLflow.

Run it with ``make demo``. It keeps all state under ``.demo/`` in the repository:

- an Airflow home with a SQLite metadata DB (``.demo/airflow``),
- an ``mlflow server`` with a SQLite store and local artifacts (``.demo/mlflow``),
- the generated dataset versions (``.demo/data``).

Then it runs ``airflow dags test example_ml_tracking`` (the real Airflow CLI), prints the MLflow
runs it produced and where to open them, and exits; ``--serve`` keeps the MLflow UI running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".demo"
BIN = Path(sys.executable).parent
DAG_ID = "example_ml_tracking"


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def free_port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])


def airflow_env(mlflow_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "MLFLOW_"))}
    home = STATE / "airflow"
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags_examples"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW_CONN_MLFLOW_DEFAULT=json.dumps({"conn_type": "mlflow", "host": mlflow_url}),
    )
    return env


def start_mlflow(port: int) -> subprocess.Popen[bytes]:
    store = STATE / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    log = (store / "server.log").open("ab")
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination",
        str(store / "artifacts"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_healthy(proc: subprocess.Popen[bytes], url: str, timeout: float = 180) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mlflow server exited; see {STATE / 'mlflow' / 'server.log'}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        time.sleep(0.5)
    raise SystemExit(f"mlflow server did not answer at {url} within {timeout:.0f}s")


PROGRESS = (
    (
        re.compile(r"\[DAG TEST\] running task <TaskInstance: [\w.-]+?\.([\w.-]+) \S+(?: map_index=(\d+))?"),
        "running {0}{1}",
    ),
    (re.compile(r"MLflow run (\w+) \((new|resumed)\) of task (\S+?),"), "  {2}: MLflow run {0} ({1})"),
)


def progress(line: str) -> str | None:
    for pattern, template in PROGRESS:
        match = pattern.search(line)
        if match:
            groups = [g or "" for g in match.groups()]
            if template.startswith("running") and groups[1]:
                groups[1] = f"[{groups[1]}]"
            return template.format(*groups)
    return None


def run(cmd: list[str], env: dict[str, str], log_name: str, show: bool = False) -> None:
    """Run a command; keep its full output in .demo/, show the lines that tell progress."""
    log_path = STATE / log_name
    started = time.monotonic()
    with (
        log_path.open("w") as log,
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            message = progress(line) if show else None
            if message:
                say(f"  {time.monotonic() - started:5.1f}s  {message}")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed (exit {proc.returncode}); full log: {log_path}")


def report(mlflow_url: str) -> list[dict[str, Any]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_url)
    experiment = client.get_experiment_by_name(DAG_ID)
    if experiment is None:
        raise SystemExit(f"no MLflow experiment {DAG_ID!r}: the DAG logged nothing")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    parent = next(r for r in runs if r.data.tags.get("airflow.role") == "dag_run")
    rows = [parent] + [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    print()
    print(f"{'MLflow run':<40} {'status':<9} {'try':<4} metrics")
    for r in sorted(rows, key=lambda r: (r is not parent, r.info.start_time)):
        name = r.info.run_name if r is parent else f"  {r.info.run_name}"
        metrics = ", ".join(
            f"{k}={v:.3g}" for k, v in sorted(r.data.metrics.items()) if not k.startswith("airflow.")
        )
        print(
            f"{name[:40]:<40} {r.info.status:<9} {r.data.tags.get('airflow.try_number', ''):<4} {metrics[:90]}"
        )
    print()
    url = f"{mlflow_url}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}"
    say(f"MLflow UI: {url}")
    return [r.to_dictionary() for r in rows]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", action="store_true", help="keep the MLflow UI running until Ctrl-C")
    parser.add_argument("--port", type=int, default=5000, help="MLflow port (default 5000, or a free one)")
    args = parser.parse_args()

    STATE.mkdir(exist_ok=True)
    port = free_port(args.port)
    mlflow_url = f"http://127.0.0.1:{port}"
    env = airflow_env(mlflow_url)
    say(f"state in {STATE}")
    say("starting mlflow server (SQLite store) ...")
    server = start_mlflow(port)
    try:
        say("migrating the Airflow metadata DB (SQLite) ...")
        run([str(BIN / "airflow"), "db", "migrate"], env, "airflow-db-migrate.log")
        wait_healthy(server, mlflow_url)
        say(f"mlflow server up at {mlflow_url}")
        say(f"running DAG {DAG_ID} with the real Airflow CLI (airflow dags test) ...")
        conf = json.dumps({"data_root": str(STATE / "data"), "versions": 2, "rows": 2000})
        run(
            [str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", conf],
            env,
            "dag-test.log",
            show=True,
        )
        report(mlflow_url)
        say(f"Airflow log of the run: {STATE / 'dag-test.log'}")
        if args.serve:
            say("serving the MLflow UI; Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                server.wait()
        else:
            say("done (run `make demo-serve` to keep the MLflow UI open)")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
