"""Hook for the relational database that holds tuning studies (Optuna's RDB storage)."""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any
from urllib.parse import quote, urlencode

from airflow.sdk import BaseHook

from airflow_ml_provider.ml.tuning.storage import check_url, redact

# Airflow connection type -> SQLAlchemy dialect+driver
DIALECTS = {
    "postgres": "postgresql+psycopg2",
    "postgresql": "postgresql+psycopg2",
    "mysql": "mysql+mysqldb",
}
# Connection extras passed on as URL query parameters (read by name, nothing else).
QUERY_EXTRAS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout", "application_name")


def default_storage_url() -> str:
    """The embedded first-run store: a SQLite file under AIRFLOW_HOME (one machine only)."""
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return f"sqlite:///{os.path.join(os.path.abspath(home), 'ml_tuning', 'studies.db')}"


# Executors that run every task on this machine: an SQLite study file is shared by their tasks.
LOCAL_EXECUTORS = ("LocalExecutor", "SequentialExecutor", "DebugExecutor")


class StudyStorageHook(BaseHook):
    """
    The database where tuning studies live, from an Airflow connection or a URL.

    A ``postgres`` or ``mysql`` connection becomes a SQLAlchemy URL (``postgresql+psycopg2://``
    ...; the extras ``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``, ``connect_timeout`` and
    ``application_name`` are passed on); a ``sqlite`` connection's host is the database file.
    Without a connection, ``storage`` (a URL holding no secret) or an SQLite file under
    ``AIRFLOW_HOME`` is used.

    :param storage_conn_id: the connection, or None.
    :param storage: a SQLAlchemy URL, used when there is no connection.
    """

    conn_name_attr = "storage_conn_id"
    hook_name = "Tuning study storage"

    def __init__(self, storage_conn_id: str | None = None, storage: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.storage_conn_id = storage_conn_id
        self.storage = storage

    @cached_property
    def url(self) -> str:
        """The SQLAlchemy URL (it may hold a password: never log it; see :attr:`display`)."""
        if self.storage_conn_id:
            url = self._url_from_connection()
        else:
            url = self.storage or default_storage_url()
        check_url(url)
        return url

    @property
    def display(self) -> str:
        return redact(self.url)

    @property
    def is_embedded(self) -> bool:
        return not self.storage_conn_id and not self.storage

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def check_shared(self, where: str, *, pods: str | None, mapped: bool) -> None:
        """
        ValueError when the study's workers cannot all reach this storage: pods (``pods`` names
        how the DAG asked for them) never share an SQLite file; mapped tasks under an executor that
        runs tasks on other machines do not share the default one.
        """
        from airflow.configuration import conf

        if pods and self.is_sqlite:
            raise ValueError(
                f"{where}: pods cannot share the SQLite study {self.display}; give storage_conn_id (PostgreSQL) "
                f"and storage_secret for {pods}."
            )
        executors = str(conf.get("core", "executor", fallback="LocalExecutor"))
        remote = [
            e for e in executors.split(",") if e.strip() and e.strip().split(".")[-1] not in LOCAL_EXECUTORS
        ]
        if mapped and self.is_embedded and remote:
            raise ValueError(
                f"{where}: mapped tuning tasks under {executors} may run on other machines, which cannot share "
                f"the default SQLite study {self.display}; give storage_conn_id (PostgreSQL)."
            )

    def _url_from_connection(self) -> str:
        conn = self.get_connection(str(self.storage_conn_id))
        kind = (conn.conn_type or "").lower()
        if kind == "sqlite":
            return f"sqlite:///{conn.host}"
        if kind not in DIALECTS:
            raise ValueError(
                f"Connection {self.storage_conn_id!r} is of type {conn.conn_type!r}; tuning studies need a "
                f"relational database: a connection of type {', '.join(sorted({*DIALECTS, 'sqlite'}))}."
            )
        if not conn.host:
            raise ValueError(f"Connection {self.storage_conn_id!r} has no host.")
        auth = ""
        if conn.login:
            auth = quote(conn.login, safe="")
            if conn.password:
                auth += ":" + quote(conn.password, safe="")
            auth += "@"
        port = f":{conn.port}" if conn.port else ""
        extras = conn.extra_dejson or {}
        query = {key: str(extras[key]) for key in QUERY_EXTRAS if extras.get(key) not in (None, "")}
        suffix = f"?{urlencode(query)}" if query else ""
        return f"{DIALECTS[kind]}://{auth}{conn.host}{port}/{quote(conn.schema or '', safe='')}{suffix}"

    def get_conn(self) -> Any:
        """A SQLAlchemy engine on the storage (closed by the caller with ``dispose()``)."""
        import sqlalchemy

        return sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool)

    def test_connection(self) -> tuple[bool, str]:
        import sqlalchemy

        engine = self.get_conn()
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT 1"))
        except Exception as err:
            return False, f"Cannot reach the tuning storage {self.display}: {type(err).__name__}: {err}"
        finally:
            engine.dispose()
        return True, f"Connected to {self.display}"
