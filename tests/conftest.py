"""Session set-up: an isolated AIRFLOW_HOME (set before anything imports Airflow) and shared servers."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="ml-provider-tests-"))
_AIRFLOW_HOME = _SESSION_DIR / "airflow_home"
_AIRFLOW_HOME.mkdir()
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
# The DAGs folder holds the test DAGs and the example DAGs, as one bundle (dag.test() needs it).
_DAGS_FOLDER = _SESSION_DIR / "dags"
_DAGS_FOLDER.mkdir()
(_DAGS_FOLDER / "tests").symlink_to(Path(__file__).parent / "dags")
(_DAGS_FOLDER / "examples").symlink_to(Path(__file__).parent.parent / "dags_examples")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_DAGS_FOLDER)
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
# One Fernet key and one JWT secret for the session, in the environment, so that child processes
# (a second `dag.test()` in the promotion race, the cluster's components) read the connections and
# task tokens this process wrote; otherwise each process generates its own.
os.environ["AIRFLOW__CORE__FERNET_KEY"] = base64.urlsafe_b64encode(os.urandom(32)).decode()
os.environ["AIRFLOW__API_AUTH__JWT_SECRET"] = secrets.token_urlsafe(32)
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"
os.environ.pop("MLFLOW_TRACKING_URI", None)

from support.step_env import has_tensorflow_stack, step_python  # noqa: E402

# Airflow's side of the tests runs without TensorFlow, as a cluster does: every operator runs its
# steps in the step environment, set once in the configuration (docs/install.md).
_IN_STEP_ENV = has_tensorflow_stack()
if not _IN_STEP_ENV:
    os.environ.setdefault("AIRFLOW__ML_PROVIDER__STEP_PYTHON", step_python())
# The test steps (steps_for_tests.py, next to this file) resolve in every interpreter a step runs in.
_TESTS = str(Path(__file__).parent)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_TESTS, os.environ.get("PYTHONPATH")]))

# The warm step servers of this test run, in a folder of its own (pytest-xdist's workers inherit
# the controller's), stopped at the end of the run instead of idling on after it.
os.environ.setdefault(
    "AIRFLOW_ML_WARM_DIR", str(Path(tempfile.gettempdir(), f"airflow-ml-warm-tests-{os.getpid()}"))
)

from support.harness import (  # noqa: E402
    AUTH_ADMIN_PASSWORD,
    MlflowServer,
    create_database,
    drop_database,
    postgres_base_url,
    sqlalchemy_url,
)

_AIRFLOW_DB_URL: str | None = None
if postgres_base_url():
    _AIRFLOW_DB_URL = create_database("airflow_test")
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = sqlalchemy_url(_AIRFLOW_DB_URL)
else:
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"

MARKERS = {"unit", "integration", "slow"}

# The step layer's tests: they import the TensorFlow stack in the test process, so they run in the
# step environment (`make test`: `.venv-steps/bin/pytest -m steps`). Whole folders, and single tests
# marked `steps` elsewhere.
STEP_LAYER = ("tests/unit/ml/", "tests/integration/ml/")


# The longest modules, longest first (measured in CI): they start first, so that the parallel
# workers end together instead of one running a long module alone at the end.
LONGEST_FIRST = (
    "tests/integration/test_reliability_cluster.py",
    "tests/integration/test_lineage_ui.py",
    "tests/integration/test_continuous_training.py",
    "tests/integration/test_continuous_training_cluster.py",
    "tests/integration/operators/test_step_placements.py",
    "tests/integration/test_sensor_outlet_scheduling.py",
    "tests/integration/operators/test_tuning.py",
    "tests/integration/operators/test_blessing.py",
    "tests/integration/test_example_dags.py",
    "tests/integration/operators/test_baselines.py",
    "tests/integration/operators/test_champion_guard.py",
    "tests/integration/test_step_cache.py",
    "tests/integration/operators/test_training_local.py",
    "tests/integration/test_cluster_harness.py",
    "tests/integration/triggers/test_dataset_watcher_cluster.py",
    "tests/integration/test_install_matrix.py",
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [item.nodeid for item in items if not MARKERS & {m.name for m in item.iter_markers()}]
    if unmarked:
        raise pytest.UsageError(
            "Every test needs a marker (unit, integration or slow); unmarked:\n  " + "\n  ".join(unmarked)
        )
    for item in items:  # before -m selects
        if item.nodeid.startswith(STEP_LAYER):
            item.add_marker(pytest.mark.steps)
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    steps = [item.nodeid for item in session.items if item.get_closest_marker("steps")]
    if steps and not _IN_STEP_ENV:
        raise pytest.UsageError(
            f"{len(steps)} selected tests are the step layer's (marked steps) and need the TensorFlow "
            f"stack, which {sys.executable} lacks: run them in the step environment "
            "(.venv-steps/bin/pytest -m steps, after make step-env), and these with -m 'not steps'. "
            f"First: {steps[0]}"
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller, or a run without xdist
        from airflow_ml_provider.runners.warm import stop_servers

        warm = Path(os.environ["AIRFLOW_ML_WARM_DIR"])
        if warm.is_dir():
            stop_servers(warm)
    if _AIRFLOW_DB_URL:
        try:
            from airflow import settings

            settings.dispose_orm()
        except Exception:
            pass
        drop_database(_AIRFLOW_DB_URL)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata DB (SQLite, or PostgreSQL when ML_PROVIDER_TEST_DATABASE_URL is set)."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def mlflow_server(session_dir: Path) -> Iterator[MlflowServer]:
    """A real mlflow server for the session (backend on PostgreSQL when configured)."""
    db_url = create_database("mlflow_test") if postgres_base_url() else None
    server = MlflowServer(
        session_dir / "mlflow", backend_store_uri=sqlalchemy_url(db_url) if db_url else None
    )
    try:
        yield server.start()
    finally:
        server.stop()
        if db_url:
            drop_database(db_url)


@pytest.fixture(scope="session")
def mlflow_auth_server(session_dir: Path) -> Iterator[MlflowServer]:
    """A real mlflow server with MLflow's basic-auth app (admin / AUTH_ADMIN_PASSWORD)."""
    server = MlflowServer(
        session_dir / "mlflow-auth", basic_auth_admin_password=AUTH_ADMIN_PASSWORD, workers=1
    )
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def mlflow_conn(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> MlflowServer:
    """Point the ``mlflow_default`` Airflow connection at the session's server."""
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", mlflow_server.connection_json())
    return mlflow_server


@pytest.fixture
def mlflow_client(mlflow_server: MlflowServer):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server.url)


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[str]:
    """An Optuna study storage for the tuning tests: a fresh PostgreSQL database, else SQLite."""
    if postgres_base_url():
        url = create_database("tuning_test")
        yield sqlalchemy_url(url)
        drop_database(url)
    else:
        yield f"sqlite:///{tmp_path / 'studies.db'}"
