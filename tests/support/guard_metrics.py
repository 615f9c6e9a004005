"""
What the champion guard tests watch: a scripted live metric (a callable the guard imports by its
path, ``support.guard_metrics:scripted``) and a SQL hook for PostgreSQL.

The script is per registered model (each test registers its own), so tests never share one. The
guard runs in this process under ``dag.test()`` (its trigger too), where the script lives.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow.providers.common.sql.hooks.sql import DbApiHook

CALLABLE = "support.guard_metrics:scripted"


@dataclass
class Script:
    """Values the metric returns, check after check (the last one repeats); actions at given calls."""

    values: list[float | None]
    actions: dict[int, Callable[[], None]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)  # the version each call asked about


SCRIPTS: dict[str, Script] = {}
_LOCK = threading.Lock()


def script(model_name: str, values: list[float | None], **actions: Callable[[], None]) -> Script:
    """Script ``model_name``'s metric; ``at_2=fn`` runs ``fn`` during the third call."""
    made = Script(list(values), {int(k.removeprefix("at_")): v for k, v in actions.items()})
    SCRIPTS[model_name] = made
    return made


def scripted(model_name: str, version: str) -> float | None:
    """The guard's metric callable: the next scripted value for ``model_name``."""
    with _LOCK:
        current = SCRIPTS[model_name]
        call = len(current.calls)
        current.calls.append(version)
    if call in current.actions:
        current.actions[call]()
    return current.values[min(call, len(current.values) - 1)]


class PostgresTestHook(DbApiHook):
    """
    A DbApiHook for ``postgres`` connections, registered only where the postgres provider is not
    installed (its PostgresHook takes the connection type otherwise): the SQL is PostgreSQL's own.
    """

    conn_name_attr = "postgres_conn_id"
    default_conn_name = "postgres_default"
    conn_type = "postgres"
    hook_name = "Postgres (tests)"

    def get_conn(self) -> Any:
        import psycopg2

        conn = self.get_connection(self.get_conn_id())
        return psycopg2.connect(
            host=conn.host,
            port=conn.port or 5432,
            user=conn.login,
            password=conn.password,
            dbname=conn.schema,
        )


def ensure_postgres_hook() -> None:
    """Make ``Connection.get_hook()`` find a hook for ``postgres`` connections in this process."""
    from airflow.sdk.providers_manager_runtime import HookInfo, ProvidersManagerTaskRuntime

    hooks = ProvidersManagerTaskRuntime().hooks
    if hooks.get("postgres") is None:
        hooks["postgres"] = HookInfo(
            hook_class_name=f"{__name__}.PostgresTestHook",
            connection_id_attribute_name="postgres_conn_id",
            package_name="tests",
            hook_name="Postgres (tests)",
            connection_type="postgres",
            connection_testable=False,
        )
