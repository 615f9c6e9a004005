"""
Read, in a DAG run, the dataset version that started it.

A run scheduled on an asset watched by :class:`~airflow_ml_provider.triggers.dataset.DatasetVersionTrigger`
is started by one or more asset events whose payload names a version. Airflow may merge several
events into one run (versions landing faster than the DAG starts); the run then covers all of them
and works on the newest. :func:`dataset_version` puts that version into any templated operator
argument, without XCom plumbing::

    MLStepOperator(task_id="describe", step="describe_dataset",
                   spec={"uri": dataset_version(churn, field="uri")})

A manual run (or a re-run for an older version) names the version in its conf instead:
``{"dataset_version": {"version": "0007", "uri": "/data/churn/version=0007"}}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Asset, Context
    from airflow.sdk.types import Operator

CONF_KEY = "dataset_version"
TAG_PREFIX = "dataset."
_MISSING = object()


def _asset_name(asset: Asset | str | None) -> str | None:
    if asset is None or isinstance(asset, str):
        return asset
    return str(asset.name)


def triggering_versions(
    context: Context | Mapping[str, Any], asset: Asset | str | None = None
) -> list[dict[str, Any]]:
    """
    Every dataset-version payload among the run's triggering asset events, oldest first.

    :param context: the task's context.
    :param asset: only events of this asset (an ``Asset`` or its name); all assets when None.
    """
    try:
        events_by_asset = context.get("triggering_asset_events") or {}
    except Exception:  # not reachable outside a running task (e.g. a DAG parse)
        return []
    wanted = _asset_name(asset)
    found: list[tuple[Any, dict[str, Any]]] = []
    for key in list(events_by_asset):
        for event in events_by_asset[key]:
            if wanted is not None and event.asset.name != wanted:
                continue
            payload = (event.extra or {}).get("payload")
            if isinstance(payload, dict) and "version" in payload:
                found.append((event.timestamp, {**payload, "asset": event.asset.name}))
    # An event can be listed under its asset and under an alias: keep one per (asset, version).
    unique: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}
    for stamp, payload in sorted(found, key=lambda item: item[0]):
        unique.setdefault((payload["asset"], str(payload["version"])), (stamp, payload))
    return [payload for _, payload in unique.values()]


def _from_conf(context: Context | Mapping[str, Any]) -> dict[str, Any] | None:
    dag_run = context.get("dag_run")
    conf = getattr(dag_run, "conf", None) or {}
    value = conf.get(CONF_KEY) if isinstance(conf, Mapping) else None
    if value is None:
        return None
    if isinstance(value, str | int):
        return {"version": str(value)}
    if isinstance(value, Mapping) and "version" in value:
        return dict(value)
    raise ValueError(
        f"dag_run.conf[{CONF_KEY!r}] must be a version name or an object with a 'version' key "
        f"(and usually 'uri'), got {value!r}."
    )


def triggering_version(
    context: Context | Mapping[str, Any], asset: Asset | str | None = None
) -> dict[str, Any] | None:
    """
    The version this run works on: ``dag_run.conf["dataset_version"]`` when given, else the newest
    version among the triggering events (of ``asset`` when given); None when there is none.

    The returned payload holds ``version``, ``uri``, ``fingerprint``, ``previous_version``,
    ``completed_at``, ``discovered_at``, ``name``, ``asset`` and, when Airflow merged several
    events into this run, ``covered_versions``.
    """
    from_conf = _from_conf(context)
    if from_conf is not None:
        return from_conf
    versions = triggering_versions(context, asset)
    if not versions:
        return None
    newest = dict(versions[-1])
    if len(versions) > 1:
        newest["covered_versions"] = [str(v["version"]) for v in versions]
    return newest


def version_tags(context: Context | Mapping[str, Any]) -> dict[str, str]:
    """MLflow tags that record the run's dataset versions (set on the DAG run's parent run)."""
    tags: dict[str, str] = {}
    payload = _from_conf(context)
    versions = [payload] if payload else triggering_versions(context)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for entry in versions:
        by_name.setdefault(str(entry.get("asset") or entry.get("name") or ""), []).append(entry)
    for name, entries in by_name.items():
        prefix = f"{TAG_PREFIX}{name}." if name else TAG_PREFIX
        newest = entries[-1]
        tags[f"{prefix}version"] = str(newest["version"])
        for field_name in ("uri", "fingerprint", "completed_at"):
            if newest.get(field_name):
                tags[f"{prefix}{field_name}"] = str(newest[field_name])
        if len(entries) > 1:
            tags[f"{prefix}covered_versions"] = ",".join(str(e["version"]) for e in entries)
    return tags


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
