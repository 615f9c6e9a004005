"""Fire when a registered model alias in the MLflow registry points to a new model version."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent
from asgiref.sync import sync_to_async

from airflow_ml_provider.hooks.mlflow import MlflowHook

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

# An unreachable server is retried with a growing delay: poll_interval * 2, * 4, ... at most this.
MAX_BACKOFF_SECONDS = 300.0
# A version still being registered (an asynchronous registry copies its files first) is not
# deployable yet; the alias counts as moved once the version is ready.
PENDING_STATUS = "PENDING_REGISTRATION"

_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def has_moved(version: ModelVersion | None, known_version: str | None) -> bool:
    """Whether the alias points to a ready version other than ``known_version``."""
    if version is None or str(getattr(version, "status", "") or "") == PENDING_STATUS:
        return False
    return known_version is None or str(version.version) != str(known_version)


def alias_event(
    version: ModelVersion, model_name: str, alias: str, known_version: str | None
) -> dict[str, Any]:
    """The event payload (and the sensor's XCom value) for ``version``, the alias's new target."""
    return {
        "status": "success",
        "model_name": model_name,
        "alias": alias,
        "version": str(version.version),
        "previous_version": known_version,
        "run_id": version.run_id or None,
        "source": version.source,
        "aliases": sorted(version.aliases or []),
    }


def describe_error(err: BaseException) -> str:
    """``Type: first line`` of ``err``, with any ``user:password@`` removed from URLs in it."""
    lines = str(err).strip().splitlines()
    text = _USERINFO.sub("", lines[0][:300]) if lines else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class ModelAliasTrigger(BaseTrigger):
    """
    Wait until a registered model alias points to a version other than ``known_version``.

    Polls the registry through :meth:`MlflowHook.get_alias_version` in a worker thread. A model
    or alias that does not exist yet is waited for; errors (server unreachable, credentials
    refused) are logged as warnings and retried with a growing delay, so the trigger never
    fails on them. Yields one event, ``{"status": "success", "model_name", "alias", "version",
    "previous_version", "run_id", "source", "aliases"}``, and ends.

    :param model_name: the registered model's name.
    :param alias: the alias to watch, for example ``champion``.
    :param known_version: the version already handled; None fires on any version the alias
        points to.
    :param mlflow_conn_id: the Airflow connection of the MLflow registry.
    :param poll_interval: seconds between registry lookups.
    """

    def __init__(
        self,
        model_name: str,
        alias: str,
        known_version: str | None = None,
        mlflow_conn_id: str = MlflowHook.default_conn_name,
        poll_interval: float = 30.0,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.alias = alias
        self.known_version = known_version
        self.mlflow_conn_id = mlflow_conn_id
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "model_name": self.model_name,
                "alias": self.alias,
                "known_version": self.known_version,
                "mlflow_conn_id": self.mlflow_conn_id,
                "poll_interval": self.poll_interval,
            },
        )

    def _backoff(self, failures: int) -> float:
        interval = float(self.poll_interval)
        cap = max(interval, min(interval * 4, MAX_BACKOFF_SECONDS))
        return float(min(interval * 2**failures, cap))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = MlflowHook(self.mlflow_conn_id)
        # thread_sensitive=False: a lookup hanging on a dead server (MLflow retries for minutes)
        # must not hold up the single shared thread other triggers' sync_to_async calls use.
        lookup = sync_to_async(hook.get_alias_version, thread_sensitive=False)
        failures = 0
        last_seen: object = object()
        while True:
            try:
                version = await lookup(self.model_name, self.alias)
            except Exception as err:
                failures += 1
                delay = self._backoff(failures)
                self.log.warning(
                    "Looking up alias %r of MLflow model %r through connection %r failed (%d in a "
                    "row): %s. Next try in %.0f s.",
                    self.alias,
                    self.model_name,
                    self.mlflow_conn_id,
                    failures,
                    describe_error(err),
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            if version is not None and has_moved(version, self.known_version):
                event = alias_event(version, self.model_name, self.alias, self.known_version)
                self.log.info(
                    "Alias %r of MLflow model %r points to version %s (known version: %s).",
                    self.alias,
                    self.model_name,
                    event["version"],
                    self.known_version,
                )
                yield TriggerEvent(event)
                return
            seen = None if version is None else (str(version.version), getattr(version, "status", None))
            if seen != last_seen:
                self._log_waiting(version)
                last_seen = seen
            await asyncio.sleep(float(self.poll_interval))

    def _log_waiting(self, version: ModelVersion | None) -> None:
        if version is None:
            self.log.info(
                "MLflow model %r has no alias %r yet (or is not registered yet); waiting.",
                self.model_name,
                self.alias,
            )
        elif str(getattr(version, "status", "")) == PENDING_STATUS:
            self.log.info(
                "Alias %r of MLflow model %r points to version %s, still being registered; waiting.",
                self.alias,
                self.model_name,
                version.version,
            )
        else:
            self.log.info(
                "Alias %r of MLflow model %r points to version %s, the known version; waiting for "
                "it to move.",
                self.alias,
                self.model_name,
                version.version,
            )
