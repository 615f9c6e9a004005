"""The run's dataset version, read from Airflow's own triggering-asset-event objects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_ml_provider.versions import (
    DatasetVersionArg,
    dataset_version,
    run_versions,
    triggering_version,
    triggering_versions,
    version_tags,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)


def event(asset: str, version: str | None, seconds: int, **payload: Any) -> Any:
    extra: dict[str, Any] = {"from_trigger": True}
    if version is not None:
        extra["payload"] = {"version": version, "uri": f"/data/{asset}/version={version}", **payload}
    return event_with_extra(asset, extra, seconds)


def outlet_event(asset: str, version: str, seconds: int, **payload: Any) -> Any:
    """The event of a DatasetVersionSensor's outlet: the payload is the extra itself."""
    extra = {"version": version, "uri": f"/data/churn/version={version}", "name": "churn", **payload}
    return event_with_extra(asset, extra, seconds)


def event_with_extra(asset: str, extra: dict[str, Any], seconds: int) -> Any:
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult

    return AssetEventDagRunReferenceResult(
        asset={"name": asset, "uri": f"file:///data/{asset}", "extra": {}},
        extra=extra,
        source_task_id=None,
        source_dag_id=None,
        source_run_id=None,
        source_map_index=None,
        source_aliases=[],
        timestamp=T0 + timedelta(seconds=seconds),
    )


def context(*events: Any, conf: dict[str, Any] | None = None) -> dict[str, Any]:
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    return {
        "triggering_asset_events": TriggeringAssetEventsAccessor.build(events),
        "dag_run": SimpleNamespace(conf=conf or {}),
    }


def test_newest_version_wins_and_merged_versions_are_listed():
    ctx = context(event("churn", "0003", 2), event("churn", "0002", 1), event("sales", "7", 3))
    assert [v["version"] for v in triggering_versions(ctx, "churn")] == ["0002", "0003"]
    newest = triggering_version(ctx, "churn")
    assert newest is not None
    assert newest["version"] == "0003" and newest["covered_versions"] == ["0002", "0003"]
    assert newest["asset"] == "churn"
    assert triggering_version(ctx, "sales")["version"] == "7"  # type: ignore[index]


def test_events_without_a_version_are_ignored():
    ctx = context(event("churn", None, 1), event("churn", "0001", 2))
    assert [v["version"] for v in triggering_versions(ctx)] == ["0001"]
    assert triggering_version(context(event("churn", None, 1))) is None


def test_conf_overrides_events():
    ctx = context(event("churn", "0003", 1), conf={"dataset_version": {"version": "0001", "uri": "/x"}})
    assert triggering_version(ctx) == {"version": "0001", "uri": "/x"}
    assert triggering_version(context(conf={"dataset_version": "0009"})) == {"version": "0009"}
    with pytest.raises(ValueError, match="dataset_version"):
        triggering_version(context(conf={"dataset_version": ["bad"]}))


def test_dataset_version_arg_resolves_fields_and_defaults():
    ctx = context(event("churn", "0004", 1, fingerprint="abc"))
    assert dataset_version("churn").resolve(ctx) == "0004"
    assert dataset_version("churn", field="uri").resolve(ctx) == "/data/churn/version=0004"
    assert dataset_version(field=None).resolve(ctx)["fingerprint"] == "abc"
    assert dataset_version("other", default="none").resolve(ctx) == "none"
    with pytest.raises(ValueError, match="no dataset version from asset 'other'"):
        dataset_version("other").resolve(ctx)
    with pytest.raises(ValueError, match="has no field 'rows'"):
        dataset_version("churn", field="rows").resolve(ctx)


def test_dataset_version_arg_accepts_an_asset_and_renders_for_the_ui():
    from airflow.sdk import Asset

    arg = dataset_version(Asset("churn", uri="file:///data/churn"), field="uri")
    assert isinstance(arg, DatasetVersionArg) and arg.asset == "churn"
    assert str(arg) == "dataset_version(asset='churn', field='uri')"


def test_version_tags_per_asset():
    ctx = context(
        event("churn", "0002", 1), event("churn", "0003", 2, fingerprint="f3"), event("sales", "7", 3)
    )
    tags = version_tags(ctx)
    assert tags["dataset.churn.version"] == "0003"
    assert tags["dataset.churn.fingerprint"] == "f3"
    assert tags["dataset.churn.covered_versions"] == "0002,0003"
    assert tags["dataset.sales.version"] == "7" and "dataset.sales.covered_versions" not in tags
    assert version_tags(context()) == {}


def test_a_sensor_outlet_event_reads_like_a_watcher_event():
    ctx = context(
        outlet_event("churn_checked", "0004", 1, fingerprint="f4", covered_versions=["0003", "0004"]),
        event_with_extra("churn_checked", {"version": "v9"}, 2),  # another producer's: no uri
    )
    payload = triggering_version(ctx, "churn_checked")
    assert payload is not None
    assert (payload["version"], payload["asset"], payload["name"]) == ("0004", "churn_checked", "churn")
    assert payload["covered_versions"] == ["0003", "0004"]  # what the sensor covered
    assert dataset_version("churn_checked", field="uri").resolve(ctx) == "/data/churn/version=0004"
    assert version_tags(ctx) == {
        "dataset.churn_checked.version": "0004",
        "dataset.churn_checked.uri": "/data/churn/version=0004",
        "dataset.churn_checked.fingerprint": "f4",
    }


def test_the_run_versions_are_resolved_once_per_context():
    ctx = context(event("churn", "0002", 1), event("churn", "0003", 2))
    resolved = run_versions(ctx)
    assert run_versions(ctx) is resolved
    assert [v.version for v in resolved.triggered] == ["0002", "0003"]
    assert run_versions(context(event("churn", "0002", 1))) is not resolved
    bad = context(event("churn", "0003", 1), conf={"dataset_version": {"uri": "/x"}})
    assert [v["version"] for v in triggering_versions(bad)] == ["0003"]  # the events still read
    with pytest.raises(ValueError, match=r"dag_run.conf\['dataset_version'\].*needs 'version'"):
        triggering_version(bad)
