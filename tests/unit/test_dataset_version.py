"""DatasetVersion: every shape the payload is stored in today reads back as one type, and round-trips."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from airflow_ml_provider.dataset_version import PAYLOAD_KEYS, DatasetVersion

pytestmark = pytest.mark.unit

# A watcher's event payload as DatasetVersionTrigger wrote it before this type existed.
WATCHER_PAYLOAD: dict[str, Any] = {
    "name": "churn",
    "uri": "/data/churn/version=0002",
    "version": "0002",
    "fingerprint": "6c2047a178509452090a647399b32d75",
    "discovered_at": "2026-12-07T10:20:56.615+00:00",
    "completed_at": "2026-12-07T10:20:56.609+00:00",
    "extra": {"files": 1, "bytes": 16},
    "previous_version": "0001",
    "source": "partitioned",
    "root": "/data/churn",
    "marker": "_SUCCESS",
    "pattern": "version=*",
    "conn_id": None,
    "state_key": "airflow_ml.dataset_version.b1052383ddec5191ffb67ce4",
}
SENSOR_PAYLOAD: dict[str, Any] = {
    **{k: v for k, v in WATCHER_PAYLOAD.items() if k != "state_key"},
    "covered_versions": ["0001", "0002"],
}

SHAPES = {
    "watcher asset event extra": ({"from_trigger": True, "payload": WATCHER_PAYLOAD}, WATCHER_PAYLOAD),
    "watcher event payload": (WATCHER_PAYLOAD, WATCHER_PAYLOAD),
    "deferred sensor event": ({"status": "success", **SENSOR_PAYLOAD}, SENSOR_PAYLOAD),
    "sensor XCom": (SENSOR_PAYLOAD, SENSOR_PAYLOAD),
    "sensor outlet extra": (dict(SENSOR_PAYLOAD), SENSOR_PAYLOAD),
    "conf object": ({"version": "0007", "uri": "/x"}, {"version": "0007", "uri": "/x"}),
    "conf object with its own keys": (
        {"version": "0007", "uri": "/x", "name": "churn", "note": "re-run"},
        {"version": "0007", "uri": "/x", "name": "churn", "note": "re-run"},
    ),
    "conf version name": ("0009", {"version": "0009"}),
    "conf version number": (9, {"version": "9"}),
}


@pytest.mark.parametrize(("shape", "expected"), SHAPES.values(), ids=SHAPES.keys())
def test_every_legacy_shape_reads_back_as_its_payload(shape: Any, expected: dict[str, Any]):
    version = DatasetVersion.from_payload(shape)
    assert version.to_payload() == expected
    assert version.version == expected["version"]
    # Round trip: the payload reads back as the same version, and serialises as JSON.
    assert DatasetVersion.from_payload(version.to_payload()) == version
    assert DatasetVersion.from_payload(json.loads(json.dumps(version.to_payload()))) == version


def test_fields_of_a_watcher_payload():
    version = DatasetVersion.from_payload({"from_trigger": True, "payload": WATCHER_PAYLOAD})
    assert (version.name, version.uri, version.root) == ("churn", "/data/churn/version=0002", "/data/churn")
    assert (version.previous_version, version.source) == ("0001", "partitioned")
    assert (version.marker, version.pattern, version.conn_id) == ("_SUCCESS", "version=*", None)
    assert (version.files, version.size_bytes) == (1, 16)
    assert version.state_key == WATCHER_PAYLOAD["state_key"]
    assert list(version.to_payload()) == list(WATCHER_PAYLOAD)  # the watcher's key order


def test_a_null_is_kept_apart_from_a_missing_key():
    # "marker": null is a source without a marker; no "marker" (a conf) lets the task's marker apply.
    no_marker = DatasetVersion.from_payload({**WATCHER_PAYLOAD, "marker": None, "previous_version": None})
    assert no_marker.to_payload()["marker"] is None and no_marker.to_payload()["previous_version"] is None
    from_conf = DatasetVersion.from_payload({"version": "1", "uri": "/x"})
    assert "marker" not in from_conf.to_payload() and from_conf.marker is None
    assert DatasetVersion(version="3", uri="/y").to_payload() == {"uri": "/y", "version": "3"}


MISSING = {
    "empty object": ({}, "needs 'version'"),
    "watcher extra without payload": ({"from_trigger": True}, r"needs 'version'.*\['from_trigger'\]"),
    "payload without version": ({"payload": {"uri": "/x"}}, r"needs 'version'.*\['uri'\]"),
    "empty version": ({"version": "", "uri": "/x"}, "needs 'version'"),
    "sensor error event": ({"status": "error", "message": "bad pattern"}, "bad pattern"),
    "a list": (["0001"], "version name or an object with a 'version' key, got list"),
    "a boolean": (True, "got bool"),
    "covered_versions not a list": ({"version": "1", "covered_versions": "1"}, "covered_versions"),
}


@pytest.mark.parametrize(("obj", "message"), MISSING.values(), ids=MISSING.keys())
def test_what_is_missing_is_named(obj: Any, message: str):
    with pytest.raises(ValueError, match=message):
        DatasetVersion.from_payload(obj)


EVENT_EXTRAS = {
    "watcher": ({"from_trigger": True, "payload": WATCHER_PAYLOAD}, "0002"),
    "sensor outlet": (SENSOR_PAYLOAD, "0002"),
    "another producer's event": ({"from_trigger": True, "payload": {"rows": 3}}, None),
    "a version without uri": ({"version": "v3"}, None),
    "no extra": (None, None),
    "malformed covered_versions": ({**SENSOR_PAYLOAD, "covered_versions": 2}, None),
}


@pytest.mark.parametrize(("extra", "version"), EVENT_EXTRAS.values(), ids=EVENT_EXTRAS.keys())
def test_asset_events_that_carry_a_version(extra: Any, version: str | None):
    found = DatasetVersion.from_event_extra(extra)
    assert (found.version if found else None) == version


def test_payload_keys_are_the_fields():
    names = [f.name for f in dataclasses.fields(DatasetVersion)]
    assert set(names) - {"null_keys", "other"} == set(PAYLOAD_KEYS)


def test_mlflow_tags():
    version = DatasetVersion.from_payload({**WATCHER_PAYLOAD, "asset": "churn_lake"})
    assert version.mlflow_tags(covered=["0001", "0002"]) == {
        "dataset.churn_lake.version": "0002",
        "dataset.churn_lake.uri": "/data/churn/version=0002",
        "dataset.churn_lake.fingerprint": WATCHER_PAYLOAD["fingerprint"],
        "dataset.churn_lake.completed_at": WATCHER_PAYLOAD["completed_at"],
        "dataset.churn_lake.covered_versions": "0001,0002",
    }
    assert DatasetVersion(version="7").mlflow_tags(covered=["7"]) == {"dataset.version": "7"}
