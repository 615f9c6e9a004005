"""Wait, in a deployment DAG, until a registered model alias points to a new model version."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.configuration import conf
from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException

from airflow_ml_provider.hooks.mlflow import MlflowHook
from airflow_ml_provider.triggers.model_alias import ModelAliasTrigger, alias_event, has_moved
from airflow_ml_provider.vocabulary import ALIAS_CHAMPION, XCOM_MODEL_ALIAS_VERSION_PREFIX

if TYPE_CHECKING:
    from airflow.sdk import Context

_PLAIN_NAME = re.compile(r"[\w.-]{1,200}")
_ALIAS = re.compile(r"[\w-]{1,255}")
_VERSION_ALIAS = re.compile(r"[vV]\d+")
# What a template pulling a missing XCom renders to: "no known version".
_UNSET = ("", "None")


# The version a task delivered is kept under a key per (model, alias), so that a task whose
# model name is templated never compares against another model's version.
def known_version_key(model_name: str, alias: str) -> str:
    """The XCom key under which the sensor records the version it delivered for ``model_name@alias``."""
    if _PLAIN_NAME.fullmatch(model_name):
        return f"{XCOM_MODEL_ALIAS_VERSION_PREFIX}{model_name}@{alias}"
    # Other characters MLflow allows in a name (spaces, ?, #, %) do not survive the XCom API's URL.
    digest = hashlib.sha256(json.dumps([model_name, alias]).encode()).hexdigest()[:20]
    return f"{XCOM_MODEL_ALIAS_VERSION_PREFIX}sha256-{digest}@{alias}"


def normalize_version(value: Any, argument: str = "known_version") -> str | None:
    """``value`` as a registry version string (``"3"``), or None when unset; ValueError otherwise."""
    if value is None or (isinstance(value, str) and value.strip() in _UNSET):
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{argument} must be a model version number or None, got {value!r}.")
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{argument} must be a model version number (1, 2, ...) or None, got {value!r}.")
    return str(int(text))


class ModelAliasSensor(BaseSensorOperator):
    """
    Wait until a registered model alias in the MLflow registry points to a new model version.

    "New" means other than ``known_version``. Without ``known_version``, it is the version this
    task delivered for the same model and alias in the latest earlier DAG run that delivered one
    (XCom key ``model_alias_version.<model>@<alias>``); when no earlier run delivered one, any
    version the alias points to satisfies the sensor. A version still being registered
    (``PENDING_REGISTRATION``) is waited for. A model or alias that does not exist yet is waited
    for, too.

    The XCom ``return_value`` is ``{"status": "success", "model_name", "alias", "version",
    "previous_version", "run_id", "source", "aliases"}``: ``run_id`` is the MLflow run that
    produced the version and ``source`` its model URI.

    Poke and reschedule mode look the alias up once per poke; an error (server unreachable,
    credentials refused) fails the try, as in any sensor (use ``retries`` or ``silent_fail``).
    Deferrable mode waits in the triggerer, which logs such errors and keeps polling until
    ``timeout``.

    :param model_name: the registered model's name. Templated.
    :param alias: the alias to watch. Templated.
    :param known_version: the version already handled (``"3"``); ``None``, ``""`` or ``"None"``
        mean the version this task delivered in the latest earlier DAG run, if any. Templated.
    :param mlflow_conn_id: the Airflow connection of the MLflow registry.
    :param poll_interval: seconds between registry lookups, in every mode (it sets
        ``poke_interval``; an explicit ``poke_interval`` wins).
    :param deferrable: wait in the triggerer instead of a worker slot; defaults to
        ``[operators] default_deferrable``.

    .. seealso:: :class:`~airflow_ml_provider.triggers.model_alias.ModelAliasTrigger`
    """

    template_fields: Sequence[str] = ("model_name", "alias", "known_version")
    ui_color = "#dbe9f6"

    def __init__(
        self,
        *,
        model_name: str,
        alias: str = ALIAS_CHAMPION,
        known_version: str | None = None,
        mlflow_conn_id: str = MlflowHook.default_conn_name,
        poll_interval: float = 30,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(poke_interval=kwargs.pop("poke_interval", poll_interval), **kwargs)
        self.model_name = model_name
        self.alias = alias
        self.known_version = known_version
        self.mlflow_conn_id = mlflow_conn_id
        self.poll_interval = poll_interval
        self.deferrable = deferrable
        self._known: str | None = None

    # -- arguments and the known version --------------------------------------------------------

    def _check_arguments(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name.strip():
            raise ValueError(f"model_name must be a registered model's name, got {self.model_name!r}.")
        if not isinstance(self.alias, str) or not _ALIAS.fullmatch(self.alias):
            raise ValueError(
                f"alias must be a registered model alias (letters, digits, '_' and '-'), got {self.alias!r}."
            )
        if self.alias.lower() == "latest" or _VERSION_ALIAS.fullmatch(self.alias):
            raise ValueError(
                f"alias {self.alias!r} is reserved by MLflow ('latest', 'v<number>') and can never "
                "be set; name the alias the registry sets, for example 'champion'."
            )
        normalize_version(self.known_version)
        if not isinstance(self.mlflow_conn_id, str) or not self.mlflow_conn_id:
            raise ValueError(f"mlflow_conn_id must be a connection id, got {self.mlflow_conn_id!r}.")
        if isinstance(self.poll_interval, bool) or not isinstance(self.poll_interval, int | float):
            raise ValueError(f"poll_interval must be a number of seconds, got {self.poll_interval!r}.")
        if self.poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {self.poll_interval!r}.")

    def _resolve_known_version(self, context: Context) -> str | None:
        explicit = normalize_version(self.known_version)
        if explicit is not None:
            return explicit
        ti = context["ti"]
        delivered = ti.xcom_pull(
            task_ids=self.task_id,
            key=known_version_key(self.model_name, self.alias),
            include_prior_dates=True,
            map_indexes=ti.map_index,
        )
        previous = normalize_version(delivered, "the version delivered by an earlier run")
        self.log.info(
            "Known version of %s@%s: %s (delivered by an earlier DAG run of this task).",
            self.model_name,
            self.alias,
            previous if previous is not None else "none, any version will do",
        )
        return previous

    def _deliver(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        context["ti"].xcom_push(known_version_key(self.model_name, self.alias), event["version"])
        self.log.info(
            "Alias %r of MLflow model %r points to version %s (previous: %s), source %s.",
            self.alias,
            self.model_name,
            event["version"],
            event.get("previous_version"),
            event.get("source"),
        )
        return event

    # -- waiting ----------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        self._check_arguments()
        self._known = self._resolve_known_version(context)
        if not self.deferrable:
            return self._deliver(context, super().execute(context))
        self.defer(
            trigger=ModelAliasTrigger(
                model_name=self.model_name,
                alias=self.alias,
                known_version=self._known,
                mlflow_conn_id=self.mlflow_conn_id,
                poll_interval=float(self.poke_interval),
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.timeout)),
        )

    def poke(self, context: Context) -> PokeReturnValue | bool:
        self._check_arguments()
        version = MlflowHook(self.mlflow_conn_id).get_alias_version(self.model_name, self.alias)
        if version is not None and has_moved(version, self._known):
            return PokeReturnValue(
                is_done=True, xcom_value=alias_event(version, self.model_name, self.alias, self._known)
            )
        self.log.info(
            "Alias %r of MLflow model %r points to %s; waiting for a version other than %s.",
            self.alias,
            self.model_name,
            f"version {version.version} ({version.status})" if version is not None else "nothing yet",
            self._known,
        )
        return False

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        if not isinstance(event, dict) or event.get("status") != "success":
            message = event.get("message") if isinstance(event, dict) else event
            raise AirflowException(
                f"Task {self.task_id!r}: waiting for alias {self.alias!r} of MLflow model "
                f"{self.model_name!r} failed: {message}"
            )
        return self._deliver(context, dict(event))
