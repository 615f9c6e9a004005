"""
Where a study lives: a relational database that every worker reaches (PostgreSQL in production,
SQLite on one machine), and a lock that makes the trial budget exact across workers.

The storage URL can hold a password, so it never travels in a spec (specs are logged and shown):
workers read it from the environment variable :data:`STORAGE_ENV`, which the launcher sets (a pod
gets it from a Secret).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

STORAGE_ENV = "AIRFLOW_ML_TUNING_STORAGE"
SQLITE_TIMEOUT_SECONDS = 60


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = f"{parts.username}:***@" if parts.username else ""
    return urlunsplit((parts.scheme, user + netloc, parts.path, parts.query, parts.fragment))


def backend(url: str) -> str:
    """``sqlite``, ``postgresql``, ``mysql`` ... (the dialect, without the driver)."""
    return urlsplit(url).scheme.split("+", 1)[0].lower()


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///`` URL, None for other backends; ValueError for an in-memory one."""
    if backend(url) != "sqlite":
        return None
    path = url.split(":///", 1)[1] if ":///" in url else ""
    if not path or path == ":memory:" or path.startswith("file::memory:"):
        raise ValueError(
            f"Tuning storage {url!r} is in memory: workers and retries could not share the study. "
            "Give a file (sqlite:////path/studies.db) or a PostgreSQL URL."
        )
    return path


def check_url(url: str) -> None:
    """ValueError for a URL Optuna's relational storage cannot use."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(
            f"Tuning storage must be a SQLAlchemy URL such as postgresql+psycopg2://user@host/db or "
            f"sqlite:////path/studies.db, got {redact(str(url))!r}."
        )
    sqlite_path(url)


def storage_url(storage: str | None = None) -> str:
    """
    The storage URL of a worker: from :data:`STORAGE_ENV`, else the spec's ``storage`` (no secrets).

    :param storage: the spec's ``storage``, or None.
    """
    url = os.environ.get(STORAGE_ENV) or storage
    if not url:
        raise ValueError(
            f"No tuning storage: set the environment variable {STORAGE_ENV} (the launcher does) or "
            "the spec's 'storage' URL."
        )
    check_url(url)
    return str(url)


def make_storage(url: str, *, heartbeat_interval: int | None, grace_period: int | None) -> Any:
    """Optuna's RDBStorage on ``url``, with heartbeats so that a dead worker's trial is found and retried."""
    import optuna

    engine_kwargs: dict[str, Any] = {}
    path = sqlite_path(url)
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # Several worker processes write to one file: wait for the lock instead of failing at once.
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_SECONDS}
    else:
        engine_kwargs["pool_pre_ping"] = True
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
    )


def _lock_key(study_name: str) -> int:
    """A signed 64-bit key for PostgreSQL's advisory locks."""
    return int.from_bytes(
        hashlib.sha256(f"airflow-ml-tuning/{study_name}".encode()).digest()[:8], "big", signed=True
    )


class StudyLock:
    """
    A lock shared by every worker of a study, held while a worker decides whether to start a trial.

    PostgreSQL: an advisory lock on a connection of its own; MySQL: ``GET_LOCK``; SQLite: an
    exclusive ``flock`` on a file next to the database (SQLite is one machine anyway). Other
    backends get no lock: the budget may then be overrun by up to one trial per extra worker.
    """

    def __init__(self, url: str, study_name: str) -> None:
        self.url = url
        self.study_name = study_name
        self.kind = backend(url)
        self._engine: Any = None
        self._connection: Any = None
        self._file: Any = None

    def _connect(self) -> Any:
        if self._connection is None:
            import sqlalchemy

            self._engine = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)
            self._connection = self._engine.connect()
        return self._connection

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if self.kind == "sqlite":
            yield from self._hold_file()
        elif self.kind == "postgresql":
            yield from self._hold_sql(
                "SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)", _lock_key(self.study_name)
            )
        elif self.kind == "mysql":
            name = f"airflow-ml-tuning/{hashlib.sha256(self.study_name.encode()).hexdigest()[:40]}"
            yield from self._hold_sql("SELECT GET_LOCK(:key, -1)", "SELECT RELEASE_LOCK(:key)", name)
        else:
            yield

    def _hold_sql(self, acquire: str, release: str, key: Any) -> Iterator[None]:
        import sqlalchemy

        connection = self._connect()
        connection.execute(sqlalchemy.text(acquire), {"key": key})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text(release), {"key": key})
            connection.commit()

    def _hold_file(self) -> Iterator[None]:
        import fcntl

        path = sqlite_path(self.url)
        assert path is not None
        if self._file is None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._file = open(f"{path}.lock", "a+b")  # kept open for the worker's life
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._engine.dispose()
            self._connection = self._engine = None
        if self._file is not None:
            self._file.close()
            self._file = None
