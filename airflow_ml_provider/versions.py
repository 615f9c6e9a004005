"""
Read, in a DAG run, the dataset version that started it.

A run scheduled on an asset watched by :class:`~airflow_ml_provider.triggers.dataset.DatasetVersionTrigger`,
or on an outlet asset of a :class:`~airflow_ml_provider.sensors.dataset.DatasetVersionSensor`, is started
by one or more asset events whose payload (a :class:`~airflow_ml_provider.dataset_version.DatasetVersion`)
names a version. Airflow may merge several events into one run (versions landing faster than the
DAG starts); the run then covers all of them and works on the newest. :func:`dataset_version` puts
that version into any templated operator argument, without XCom plumbing::

    MLStepOperator(task_id="describe", step="describe_dataset",
                   spec={"uri": dataset_version(churn, field="uri")})

A manual run (or a re-run for an older version) names the version in its conf instead:
``{"dataset_version": {"version": "0007", "uri": "/data/churn/version=0007"}}``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.dataset_version import CONF_KEY, TAG_PREFIX, DatasetVersion

if TYPE_CHECKING:
    from airflow.sdk import Asset, Context
    from airflow.sdk.types import Operator

__all__ = [
    "CONF_KEY",
    "TAG_PREFIX",
    "DatasetVersionArg",
    "RunVersions",
    "dataset_version",
    "run_versions",
    "triggering_version",
    "triggering_versions",
    "version_tags",
]

_MISSING = object()
# Resolved views kept per (triggering events, dag run) objects: a task reads its version several
# times (its templated fields, its completeness check, its MLflow tags, freshness).
_MEMO_SIZE = 16
_memo: OrderedDict[tuple[int, int], tuple[Any, Any, RunVersions]] = OrderedDict()


def _asset_name(asset: Asset | str | None) -> str | None:
    if asset is None or isinstance(asset, str):
        return asset
    return str(asset.name)


@dataclass(frozen=True)
class RunVersions:
    """
    The dataset versions of one DAG run, resolved once from its context.

    :param from_conf: the version ``dag_run.conf["dataset_version"]`` names, if any.
    :param triggered: the versions of the run's triggering asset events, oldest first, one per
        (asset, version), each with ``asset`` set to the asset whose event carried it.
    :param conf_error: why ``dag_run.conf["dataset_version"]`` is not a dataset version; raised
        (ValueError) by what reads the conf's version, :meth:`current` and :meth:`mlflow_tags`.
    """

    from_conf: DatasetVersion | None = None
    triggered: tuple[DatasetVersion, ...] = ()
    conf_error: str | None = None

    def _conf(self) -> DatasetVersion | None:
        if self.conf_error is not None:
            raise ValueError(self.conf_error)
        return self.from_conf

    def of_asset(self, asset: str | None = None) -> list[DatasetVersion]:
        """The triggering versions of ``asset`` (of every asset when None), oldest first."""
        return [v for v in self.triggered if asset is None or v.asset == asset]

    def current(self, asset: str | None = None) -> DatasetVersion | None:
        """The version the run works on: the conf's, else the newest triggering one (listing all)."""
        from_conf = self._conf()
        if from_conf is not None:
            return from_conf
        versions = self.of_asset(asset)
        if not versions:
            return None
        if len(versions) == 1:
            return versions[0]
        return replace(versions[-1], covered_versions=tuple(v.version for v in versions))

    def mlflow_tags(self) -> dict[str, str]:
        """MLflow tags recording the run's versions, per asset (see :meth:`DatasetVersion.mlflow_tags`)."""
        from_conf = self._conf()
        entries = [from_conf] if from_conf is not None else list(self.triggered)
        by_label: dict[str, list[DatasetVersion]] = {}
        for entry in entries:
            by_label.setdefault(entry.label, []).append(entry)
        tags: dict[str, str] = {}
        for group in by_label.values():
            tags.update(group[-1].mlflow_tags(covered=[v.version for v in group]))
        return tags


def _triggered(events_by_asset: Any) -> tuple[DatasetVersion, ...]:
    found: list[tuple[Any, DatasetVersion]] = []
    for key in list(events_by_asset):
        for event in events_by_asset[key]:
            version = DatasetVersion.from_event_extra(event.extra)
            if version is not None:
                found.append((event.timestamp, replace(version, asset=event.asset.name)))
    # An event can be listed under its asset and under an alias: keep one per (asset, version).
    unique: dict[tuple[str | None, str], DatasetVersion] = {}
    for _, version in sorted(found, key=lambda item: item[0]):
        unique.setdefault((version.asset, version.version), version)
    return tuple(unique.values())


def _from_conf(dag_run: Any) -> tuple[DatasetVersion | None, str | None]:
    """The conf's version, or why the conf's value is not one."""
    conf = getattr(dag_run, "conf", None) or {}
    value = conf.get(CONF_KEY) if isinstance(conf, Mapping) else None
    if value is None:
        return None, None
    try:
        return DatasetVersion.from_payload(value), None
    except ValueError as err:
        return None, (
            f"dag_run.conf[{CONF_KEY!r}] must be a version name or an object with a 'version' key "
            f"(and usually 'uri'), got {value!r}: {err}"
        )


def run_versions(context: Context | Mapping[str, Any]) -> RunVersions:
    """The run's dataset versions, resolved once per task: the same context gives the same object."""
    try:
        events = context.get("triggering_asset_events")
    except Exception:  # not reachable outside a running task (e.g. a DAG parse)
        events = None
    dag_run = context.get("dag_run")
    key = (id(events), id(dag_run))
    cached = _memo.get(key)
    # The entry holds both objects, so their ids cannot be reused while it lives.
    if cached is not None and cached[0] is events and cached[1] is dag_run:
        return cached[2]
    from_conf, conf_error = _from_conf(dag_run)
    resolved = RunVersions(from_conf, _triggered(events or {}), conf_error)
    _memo[key] = (events, dag_run, resolved)
    while len(_memo) > _MEMO_SIZE:
        _memo.popitem(last=False)
    return resolved


def triggering_versions(
    context: Context | Mapping[str, Any], asset: Asset | str | None = None
) -> list[dict[str, Any]]:
    """
    Every dataset-version payload among the run's triggering asset events, oldest first.

    Events of a :class:`~airflow_ml_provider.triggers.dataset.DatasetVersionTrigger` watcher and
    of a :class:`~airflow_ml_provider.sensors.dataset.DatasetVersionSensor`'s outlets count alike.

    :param context: the task's context.
    :param asset: only events of this asset (an ``Asset`` or its name); all assets when None.
    """
    return [version.to_payload() for version in run_versions(context).of_asset(_asset_name(asset))]


def triggering_version(
    context: Context | Mapping[str, Any], asset: Asset | str | None = None
) -> dict[str, Any] | None:
    """
    The version this run works on: ``dag_run.conf["dataset_version"]`` when given, else the newest
    version among the triggering events (of ``asset`` when given); None when there is none.

    The returned payload (:meth:`DatasetVersion.to_payload`) holds ``version``, ``uri``,
    ``fingerprint``, ``previous_version``, ``completed_at``, ``discovered_at``, ``name``, ``asset``
    and, when Airflow merged several events into this run, ``covered_versions``.
    """
    version = run_versions(context).current(_asset_name(asset))
    return version.to_payload() if version is not None else None


def version_tags(context: Context | Mapping[str, Any]) -> dict[str, str]:
    """MLflow tags that record the run's dataset versions (set on the DAG run's parent run)."""
    return run_versions(context).mlflow_tags()


@dataclass(frozen=True)
class DatasetVersionArg:
    """A templated-field value that resolves, when the task runs, to the run's dataset version."""

    asset: str | None = None
    field: str | None = "version"
    default: Any = _MISSING

    def iter_references(self) -> Iterable[tuple[Operator, str]]:
        return ()

    def resolve(self, context: Context) -> Any:
        payload = triggering_version(context, self.asset)
        if payload is None:
            if self.default is not _MISSING:
                return self.default
            which = f"asset {self.asset!r}" if self.asset else "any asset"
            raise ValueError(
                f"This DAG run has no dataset version from {which}: it was not started by a "
                f"DatasetVersionTrigger event. Start it from the asset, or pass "
                f'conf {{"{CONF_KEY}": {{"version": ..., "uri": ...}}}}, or give dataset_version(default=...).'
            )
        if self.field is None:
            return payload
        if self.field not in payload:
            raise ValueError(
                f"The dataset version {payload.get('version')!r} has no field {self.field!r}; it has "
                f"{sorted(payload)}."
            )
        return payload[self.field]

    def __str__(self) -> str:  # what the UI shows for the unrendered field
        return f"dataset_version(asset={self.asset!r}, field={self.field!r})"


def dataset_version(
    asset: Asset | str | None = None, *, field: str | None = "version", default: Any = _MISSING
) -> Any:
    """
    The run's dataset version, for any templated operator argument (resolved when the task runs).

    :param asset: the ``Asset`` (or its name) whose version is wanted; any when None.
    :param field: which field of the payload: ``version`` (default), ``uri``, ``fingerprint``,
        ``previous_version``, ``completed_at`` ...; None for the whole payload (a dict).
    :param default: the value when the run has no dataset version (else the task fails, saying so).
    """
    return DatasetVersionArg(asset=_asset_name(asset), field=field, default=default)
