"""Wait, in a DAG run, for a dataset version newer than the last one this task delivered."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.configuration import conf
from airflow.sdk import Asset, BaseSensorOperator, PokeReturnValue

from airflow_ml_provider.dataset_version import DatasetVersion
from airflow_ml_provider.hooks.datasets import DEFAULT_MARKER, DEFAULT_PATTERN
from airflow_ml_provider.triggers.dataset import DatasetVersionTrigger, newest_after
from airflow_ml_provider.vocabulary import STATE_SENSOR_KEY, XCOM_DATASET_VERSION_DELIVERED

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_ml_provider.hooks.datasets import DatasetVersionSource

STATE_KEY = STATE_SENSOR_KEY
XCOM_DELIVERED = XCOM_DATASET_VERSION_DELIVERED


class DatasetVersionSensor(BaseSensorOperator):
    """
    Wait for a dataset version newer than the last one this task delivered; push it to XCom.

    "The last one delivered" is ``after_version`` when given; otherwise it is kept in the state
    store of the task's asset (its first outlet, else its first inlet) when it has one, else
    read from the XCom ``dataset_version_delivered`` this task pushed in its latest earlier run. With none of these, any
    complete version satisfies the sensor. When several newer versions exist, the newest is
    delivered and the payload lists them all under ``covered_versions``.

    The XCom value (and, for each asset outlet, the asset event's extra) is the version payload
    (:class:`~airflow_ml_provider.dataset_version.DatasetVersion`): ``version``, ``uri``,
    ``fingerprint``, ``previous_version``, ``completed_at``, ``name``, ``covered_versions`` ... A DAG
    scheduled on an outlet asset reads it with ``dataset_version(...)`` as it would a watcher's.

    :param uri: the dataset's root (or object, with ``source="object"``). Templated.
    :param source: ``partitioned``, ``object`` or ``package.module:Class``.
    :param pattern: version folder name with ``*`` for the version. Templated.
    :param ordering: ``lexical``, ``numeric`` or ``timestamp``.
    :param marker: completion marker file (``_SUCCESS``); None for none.
    :param conn_id: Airflow connection of the storage.
    :param name: the dataset's name in payloads; defaults to the root's last component. Templated.
    :param after_version: deliver only versions ordered after this one. Templated.
    :param deferrable: wait in the triggerer instead of a worker slot; defaults to
        ``[operators] default_deferrable``.
    :param poke_interval: seconds between checks, in every mode (default 60).

    .. seealso:: :class:`~airflow_ml_provider.triggers.dataset.DatasetVersionTrigger`, which starts
        DAG runs from new versions without any sensor.
    """

    template_fields: Sequence[str] = ("uri", "pattern", "name", "after_version")
    ui_color = "#e8f2d9"

    def __init__(
        self,
        *,
        uri: str,
        source: str = "partitioned",
        pattern: str = DEFAULT_PATTERN,
        ordering: str = "lexical",
        marker: str | None = DEFAULT_MARKER,
        conn_id: str | None = None,
        name: str | None = None,
        after_version: str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.uri = uri
        self.source = source
        self.pattern = pattern
        self.ordering = ordering
        self.marker = marker
        self.conn_id = conn_id
        self.name = name
        self.after_version = after_version
        self.deferrable = deferrable
        self._source: DatasetVersionSource | None = None
        self._after: str | None = None

    def _trigger(self) -> DatasetVersionTrigger:
        return DatasetVersionTrigger(
            self.uri,
            source=self.source,
            pattern=self.pattern,
            ordering=self.ordering,
            marker=self.marker,
            conn_id=self.conn_id,
            name=self.name,
            poll_interval=float(self.poke_interval),
            after_version=self._after,
            fire_once=True,
        )

    # -- the watermark --------------------------------------------------------------------------

    def _asset(self) -> Asset | None:
        for candidate in [*self.outlets, *self.inlets]:
            if isinstance(candidate, Asset):
                return candidate
        return None

    def _state_key(self) -> str:
        return STATE_KEY.format(dag_id=self.dag_id, task_id=self.task_id)

    def _last_delivered(self, context: Context) -> str | None:
        if self.after_version:
            return str(self.after_version)
        asset = self._asset()
        if asset is not None:
            value = context["asset_state_store"][asset].get(self._state_key())
            return str(value) if value is not None else None
        ti = context["ti"]
        # With map_indexes given, Airflow returns the newest value (without it, a list of all of them).
        value = ti.xcom_pull(
            task_ids=self.task_id, key=XCOM_DELIVERED, include_prior_dates=True, map_indexes=ti.map_index
        )
        return str(value) if value else None

    def _deliver(self, context: Context, found: Any) -> dict[str, Any]:
        """Record and publish the version found (a payload in any shape); return the XCom value."""
        version = DatasetVersion.from_payload(found)
        payload = version.to_payload()
        asset = self._asset()
        if asset is not None and not self.after_version:
            context["asset_state_store"][asset].set(self._state_key(), version.version)
        context["ti"].xcom_push(XCOM_DELIVERED, version.version)
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra.update(payload)
        self.log.info(
            "Dataset %s: version %s at %s (after %s)", version.name, version.version, version.uri, self._after
        )
        return payload

    # -- the three ways of waiting --------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        self._after = self._last_delivered(context)
        self._source = self._trigger().build_source()  # a bad argument fails here, naming it
        self.log.info("Waiting for a version of %s after %s", self.uri, self._after or "none (any version)")
        if not self.deferrable:
            return self._deliver(context, super().execute(context))
        found = self.poke(context)
        if isinstance(found, PokeReturnValue) and found.is_done:
            return self._deliver(context, found.xcom_value)
        self.defer(
            trigger=self._trigger(),
            method_name="execute_complete",
            timeout=timedelta(seconds=float(self.timeout)) if self.timeout else None,
        )

    def poke(self, context: Context) -> PokeReturnValue | bool:
        if self._source is None:
            self._source = self._trigger().build_source()
        try:
            versions = self._source.list_versions()
        except FileNotFoundError:
            return False  # the root does not exist yet: no version yet
        newest = newest_after(self._source, versions, self._after)
        return PokeReturnValue(is_done=True, xcom_value=newest.to_payload()) if newest else False

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        if event.get("status") != "success":
            raise ValueError(
                f"Task {self.task_id!r}: waiting for a version of {self.uri} failed: {event.get('message')}"
            )
        self._after = self._last_delivered(context)
        return self._deliver(context, event)
