"""
Exactly-once delivery of dataset versions on Airflow 3.3, as listeners the provider registers.

Two gaps sit between a watcher's event and a DAG run, outside any trigger's reach:

1. **A restart can repeat a version.** A trigger cannot tell whether the triggerer stored an event
   it fired just before stopping, so it fires it again (at least once). The ``on_asset_event_emitted``
   listener runs inside the very database transaction that stores the event and records the
   version as *delivered* in the asset's state store; a restarted trigger reads that record and
   does not fire the version again.
2. **Airflow can strand events** (apache/airflow#56050, fixed upstream only in 3.4): the scheduler
   creates an asset-triggered run from the *oldest* queued event and then deletes the queue row,
   so events stored between the two wait, unconsumed, until an unrelated later event arrives. The
   ``on_dag_run_running`` listener runs in the scheduler's transaction that starts the run and
   queues the DAG again when such events exist, so the next run covers them.

Both act only on events of :class:`~airflow_ml_provider.triggers.dataset.DatasetVersionTrigger`
(their payload carries ``state_key``), and never let an error of theirs reach Airflow's own work:
each runs in a savepoint and logs what went wrong.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

from airflow_ml_provider.dataset_version import DatasetVersion
from airflow_ml_provider.triggers.dataset import delivered_key

log = logging.getLogger(__name__)

# Versions kept in the delivered record: the window a restarted trigger may not have committed yet.
MAX_DELIVERED = 500


def _ours(extra: Any) -> DatasetVersion | None:
    """The version a watcher's asset event carries (``extra["payload"]`` with a ``state_key``), else None."""
    payload = extra.get("payload") if isinstance(extra, Mapping) else None
    try:
        version = DatasetVersion.from_payload(payload) if isinstance(payload, Mapping) else None
    except (TypeError, ValueError):
        return None
    return version if version is not None and version.state_key else None


def _session() -> Any:
    """The caller's session: Airflow's scoped session, so writes join the caller's transaction."""
    from airflow import settings

    if settings.Session is None:
        raise RuntimeError("no Airflow database session in this process")
    return settings.Session()


def record_delivered(asset_name: str, asset_uri: str, delivered: DatasetVersion) -> None:
    """Add the delivered version to the asset's delivered record, in the current transaction."""
    from airflow._shared.state import AssetScope, AssetStateStoreWriterKind
    from airflow.models.asset import AssetModel
    from airflow.state import get_state_backend
    from airflow.state.metastore import MetastoreBackend
    from sqlalchemy import select

    session = _session()
    with session.begin_nested():
        asset_id = session.scalar(
            select(AssetModel.id).where(AssetModel.name == asset_name, AssetModel.uri == asset_uri)
        )
        if asset_id is None:
            return
        backend = get_state_backend()
        scope = AssetScope(asset_id=asset_id)
        key = delivered_key(str(delivered.state_key))
        current = backend.get(scope, key, session=session)
        versions = json.loads(current) if current else []
        version = delivered.version
        if version not in versions:
            versions = [*versions, version][-MAX_DELIVERED:]
        value = json.dumps(versions)
        if isinstance(backend, MetastoreBackend):
            backend.set_asset_state_store(
                scope, key, value, kind=AssetStateStoreWriterKind.WATCHER, session=session
            )
        else:
            backend.set(scope, key, value, session=session)


def requeue_stranded(dag_id: str) -> int:
    """
    Queue ``dag_id`` again for its watched events that no run consumed and no queue row covers.

    Stranded events are newer than the newest asset-triggered run's ``run_after`` (so no existing
    run's window holds them) while no queue row exists. Runs inside the scheduler's transaction,
    which forbids commits and savepoints: only reads and one conflict-free insert, so nothing here
    can abort the scheduler's own work.
    """
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, DagScheduleAssetReference
    from airflow.models.dagrun import DagRun
    from sqlalchemy import func, select

    session = _session()
    newest_run_after = session.scalar(
        select(func.max(DagRun.run_after)).where(
            DagRun.dag_id == dag_id, DagRun.run_type == "asset_triggered"
        )
    )
    if newest_run_after is None:
        return 0
    requeued = 0
    asset_ids = session.scalars(
        select(DagScheduleAssetReference.asset_id).where(DagScheduleAssetReference.dag_id == dag_id)
    ).all()
    for asset_id in asset_ids:
        queued = session.scalar(
            select(func.count())
            .select_from(AssetDagRunQueue)
            .where(AssetDagRunQueue.asset_id == asset_id, AssetDagRunQueue.target_dag_id == dag_id)
        )
        if queued:
            continue  # a queue row exists: the next run's window covers everything before it
        events = session.execute(
            select(AssetEvent.timestamp, AssetEvent.extra).where(
                AssetEvent.asset_id == asset_id, AssetEvent.timestamp > newest_run_after
            )
        ).all()
        stranded = [stamp for stamp, extra in events if _ours(extra)]
        if stranded:
            _insert_queue_row(session, asset_id, dag_id, max(stranded))
            requeued += len(stranded)
    if requeued:
        log.info("Queued %s again for %d dataset-version events no run consumed", dag_id, requeued)
    return requeued


def _insert_queue_row(session: Any, asset_id: int, dag_id: str, created_at: Any) -> None:
    from airflow.models.asset import AssetDagRunQueue

    values = {"asset_id": asset_id, "target_dag_id": dag_id, "created_at": created_at}
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(pg_insert(AssetDagRunQueue).values(**values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        session.execute(sqlite_insert(AssetDagRunQueue).values(**values).on_conflict_do_nothing())
    else:
        from sqlalchemy import insert

        session.execute(insert(AssetDagRunQueue).values(**values).prefix_with("IGNORE"))


class DatasetVersionListener:
    """Listener hooks (see the module docstring)."""

    @hookimpl
    def on_asset_event_emitted(self, asset_event: Any) -> None:
        delivered = _ours(getattr(asset_event, "extra", None))
        if delivered is None:
            return
        try:
            record_delivered(asset_event.asset.name, asset_event.asset.uri, delivered)
        except Exception:
            log.warning("Could not record dataset version %s as delivered", delivered.version, exc_info=True)

    @hookimpl
    def on_dag_run_running(self, dag_run: Any, msg: str) -> None:
        run_type = getattr(dag_run, "run_type", None)
        if getattr(run_type, "value", run_type) != "asset_triggered":
            return
        try:
            requeue_stranded(dag_run.dag_id)
        except Exception:
            log.warning(
                "Could not check %s for stranded dataset-version events", dag_run.dag_id, exc_info=True
            )


class DatasetVersionsPlugin(AirflowPlugin):
    """Registers :class:`DatasetVersionListener` in every Airflow component."""

    name = "airflow_ml_provider_dataset_versions"
    listeners = [DatasetVersionListener()]
