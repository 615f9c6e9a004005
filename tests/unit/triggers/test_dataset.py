"""DatasetVersionTrigger driven for real (``run().asend``) against real folders and a failing store."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from support.dataset_fixtures import DictStateStore, complete, land, register_flaky

from airflow_ml_provider.triggers import dataset as trigger_module
from airflow_ml_provider.triggers.dataset import DatasetVersionTrigger

pytestmark = [pytest.mark.unit, pytest.mark.anyio]

POLL = 0.05


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the triggerer's event loop


@pytest.fixture(autouse=True)
def _commit_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real delay (3 s) waits for the triggerer to persist events; here nothing persists them.
    monkeypatch.setattr(trigger_module, "COMMIT_DELAY_SECONDS", 0.0)


def make(root: Path | str, store: DictStateStore | None = None, **kwargs: Any) -> DatasetVersionTrigger:
    trigger = DatasetVersionTrigger(str(root), poll_interval=POLL, **kwargs)
    trigger.asset_state_store = store
    return trigger


class Events:
    """Pull a trigger's events; a wait that sees none keeps its pending pull for the next call."""

    def __init__(self, trigger: DatasetVersionTrigger) -> None:
        self.gen = trigger.run()
        self.pending: asyncio.Future[Any] | None = None

    def _pull(self) -> asyncio.Future[Any]:
        if self.pending is None:
            self.pending = asyncio.ensure_future(self.gen.__anext__())
        return self.pending

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        event = await asyncio.wait_for(asyncio.shield(self._pull()), timeout)
        self.pending = None
        return dict(event.payload)

    async def none(self, wait: float = 0.5) -> None:
        pull = self._pull()
        await asyncio.sleep(wait)
        assert not pull.done(), f"unexpected event {pull.result().payload if pull.done() else None}"

    async def aclose(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await self.pending
        await self.gen.aclose()


def test_serialize_round_trip(tmp_path: Path):
    trigger = DatasetVersionTrigger(
        str(tmp_path), pattern="dt=*", ordering="timestamp", marker="_DONE", conn_id="aws", poll_interval=2
    )
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    again = getattr(importlib.import_module(module), name)(**kwargs)
    assert again.serialize() == (classpath, kwargs)
    assert classpath == "airflow_ml_provider.triggers.dataset.DatasetVersionTrigger"
    import json

    json.dumps(kwargs)  # JSON-able only


async def test_fires_once_per_new_version_in_order(tmp_path: Path):
    gen = Events(make(tmp_path, DictStateStore(), start_from="all"))
    land(tmp_path, "0001")
    first = await gen.next()
    assert (first["version"], first["previous_version"]) == ("0001", None)
    assert first["uri"] == f"{tmp_path}/version=0001" and first["fingerprint"]
    await gen.none()  # the version stays there: no second event
    land(tmp_path, "0002")
    land(tmp_path, "0003")  # two versions within one poll: both, in order
    second, third = await gen.next(), await gen.next()
    assert [second["version"], third["version"]] == ["0002", "0003"]
    assert [second["previous_version"], third["previous_version"]] == ["0001", "0002"]
    await gen.aclose()


async def test_version_without_marker_waits_until_complete(tmp_path: Path):
    gen = Events(make(tmp_path, DictStateStore()))
    half = land(tmp_path, "0001", marker=False)
    await gen.none()
    complete(half)
    assert (await gen.next())["version"] == "0001"
    await gen.aclose()


@pytest.mark.parametrize(
    ("start_from", "expected"), [("latest", ["3"]), ("all", ["1", "2", "3"]), ("new", [])]
)
async def test_start_from_on_first_poll(tmp_path: Path, start_from: str, expected: list[str]):
    for version in ("1", "2", "3"):
        land(tmp_path, version)
    store = DictStateStore()
    gen = Events(make(tmp_path, store, start_from=start_from))
    got = [(await gen.next())["version"] for _ in expected]
    assert got == expected
    await gen.none()
    land(tmp_path, "4")
    assert (await gen.next())["version"] == "4"  # later versions fire whatever start_from was
    await gen.aclose()


async def test_restart_neither_loses_nor_repeats(tmp_path: Path):
    store = DictStateStore()
    land(tmp_path, "0001")
    gen = Events(make(tmp_path, store))
    assert (await gen.next())["version"] == "0001"
    land(tmp_path, "0002")
    assert (await gen.next())["version"] == "0002"
    await gen.none(0.3)  # lets it commit the watermark
    await gen.aclose()  # the triggerer stops
    land(tmp_path, "0003")  # lands while nothing watches
    gen = Events(make(tmp_path, store))  # a new triggerer, same asset state store
    event = await gen.next()
    assert (event["version"], event["previous_version"]) == ("0003", "0002")
    await gen.none()
    await gen.aclose()
    (state,) = store.data.values()
    assert state["known"] == ["0001", "0002", "0003"] and state["last"]["version"] == "0003"


async def test_uncommitted_versions_are_delivered_again_after_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """At-least-once: an event the triggerer may not have persisted is not yet in the watermark."""
    monkeypatch.setattr(trigger_module, "COMMIT_DELAY_SECONDS", 3600.0)
    store = DictStateStore()
    land(tmp_path, "0001")
    gen = Events(make(tmp_path, store))
    assert (await gen.next())["version"] == "0001"
    await gen.none(0.3)
    await gen.aclose()
    (state,) = store.data.values()
    assert state["known"] == []  # only the first watermark (nothing delivered) was written
    gen = Events(make(tmp_path, store))
    assert (await gen.next())["version"] == "0001"
    await gen.aclose()


async def test_a_crash_before_the_first_commit_does_not_turn_new_versions_into_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The first watermark is written at once, so a restart knows the watcher had started: the
    versions that landed since are new, not history to skip (found on a real cluster whose
    triggerer was SIGKILLed within 3 s of its first poll)."""
    monkeypatch.setattr(trigger_module, "COMMIT_DELAY_SECONDS", 3600.0)
    store = DictStateStore()
    gen = Events(make(tmp_path, store))
    await gen.none(0.3)  # first poll: no version yet
    land(tmp_path, "0001")
    land(tmp_path, "0002")
    assert (await gen.next())["version"] == "0001"  # handed over, never committed
    await gen.aclose()  # the triggerer dies
    land(tmp_path, "0003")
    gen = Events(make(tmp_path, store))
    assert [(await gen.next())["version"] for _ in range(3)] == ["0001", "0002", "0003"]
    await gen.none()
    await gen.aclose()


async def test_late_version_below_the_newest_still_fires(tmp_path: Path):
    """Version 2 completes after version 3: it is new, so it fires (no max-only watermark)."""
    gen = Events(make(tmp_path, DictStateStore()))
    two = land(tmp_path, "2", marker=False)
    land(tmp_path, "3")
    assert (await gen.next())["version"] == "3"
    complete(two)
    late = await gen.next()
    assert (late["version"], late["previous_version"]) == ("2", "3")
    await gen.aclose()


async def test_deleted_version_is_not_fired_again(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    gen = Events(make(tmp_path, DictStateStore()))
    first = land(tmp_path, "1")
    assert (await gen.next())["version"] == "1"
    with caplog.at_level(logging.INFO):
        shutil.rmtree(first)
        await gen.none()
        land(tmp_path, "1")  # re-landed under the same name: already delivered
        await gen.none()
    assert any("disappeared" in r.getMessage() for r in caplog.records)
    await gen.aclose()


async def test_traversal_names_are_rejected_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    gen = Events(make(tmp_path, DictStateStore()))
    with caplog.at_level(logging.WARNING):
        land(tmp_path, "..%2f..")
        land(tmp_path, "a..b")
        await gen.none()
        land(tmp_path, "ok")
        assert (await gen.next())["version"] == "ok"
    refused = [r.getMessage() for r in caplog.records if "ignoring folder" in r.getMessage()]
    assert len(refused) == 2
    await gen.aclose()


async def test_missing_root_is_an_empty_dataset(tmp_path: Path):
    root = tmp_path / "not-yet"
    gen = Events(make(root, DictStateStore(), start_from="latest"))
    await gen.none()
    land(root, "1")
    land(root, "2")
    assert [(await gen.next())["version"] for _ in range(2)] == ["1", "2"]
    await gen.aclose()


@pytest.mark.parametrize(
    "error",
    [ConnectionError("storage unreachable"), PermissionError("access denied"), OSError("I/O error")],
    ids=["unreachable", "permission-denied", "io-error"],
)
async def test_storage_errors_are_logged_and_retried(error: BaseException, caplog: pytest.LogCaptureFixture):
    import fsspec

    flaky = register_flaky()
    fs = fsspec.filesystem("flaky")
    fs.pipe("/lake/t/version=1/_SUCCESS", b"")
    flaky.error = error
    gen = Events(make("flaky://lake/t", DictStateStore()))
    with caplog.at_level(logging.WARNING):
        await gen.none(0.4)
    warnings = [r.getMessage() for r in caplog.records if "listing flaky://lake/t failed" in r.getMessage()]
    assert warnings and type(error).__name__ in warnings[0] and str(error) in warnings[0]
    flaky.error = None
    assert (await gen.next(timeout=10))["version"] == "1"
    await gen.aclose()


async def test_state_store_outage_is_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    class Broken(DictStateStore):
        fail = True

        async def aget(self, key: str, default: Any = None) -> Any:
            if self.fail:
                raise RuntimeError("metadata DB unavailable")
            return await super().aget(key, default)

    store = Broken()
    land(tmp_path, "1")
    gen = Events(make(tmp_path, store))
    with caplog.at_level(logging.WARNING):
        await gen.none(0.3)
    assert any("state store unavailable" in r.getMessage() for r in caplog.records)
    store.fail = False
    assert (await gen.next(timeout=10))["version"] == "1"
    await gen.aclose()


async def test_bad_arguments_end_the_watcher_with_a_logged_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.ERROR):
        events = [e async for e in make(tmp_path, ordering="newest").run()]
    assert events == []
    assert any("cannot start" in r.getMessage() and "ordering" in r.getMessage() for r in caplog.records)


async def test_fire_once_mode_for_the_sensor(tmp_path: Path):
    land(tmp_path, "1")
    land(tmp_path, "2")
    events = [e.payload async for e in make(tmp_path, after_version="1", fire_once=True).run()]
    assert len(events) == 1
    assert events[0]["status"] == "success" and events[0]["version"] == "2"
    assert events[0]["covered_versions"] == ["2"]
    gen = Events(make(tmp_path, after_version="2", fire_once=True))
    await gen.none()
    land(tmp_path, "3")
    land(tmp_path, "4")
    event = await gen.next()
    assert event["version"] == "4" and event["covered_versions"] == ["3", "4"]


async def test_fire_once_bad_arguments_yield_an_error_event(tmp_path: Path):
    events = [e.payload async for e in make(tmp_path, pattern="no-star", fire_once=True).run()]
    assert events[0]["status"] == "error" and "pattern" in events[0]["message"]


async def test_object_source_fires_on_each_change(tmp_path: Path):
    import os
    import time

    target = tmp_path / "export.csv"
    target.write_text("a\n1\n")
    gen = Events(make(target, DictStateStore(), source="object"))
    first = await gen.next()
    await gen.none()
    target.write_text("a\n1\n2\n")
    os.utime(target, (time.time() + 5, time.time() + 5))
    second = await gen.next()
    assert second["previous_version"] == first["version"] and second["fingerprint"] != first["fingerprint"]
    await gen.aclose()


async def test_watermark_keeps_a_floor_beyond_its_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(trigger_module, "MAX_KNOWN_VERSIONS", 3)
    for v in range(1, 7):
        land(tmp_path, f"{v:02d}")
    store = DictStateStore()
    gen = Events(make(tmp_path, store, start_from="all"))
    assert [(await gen.next())["version"] for _ in range(6)] == ["01", "02", "03", "04", "05", "06"]
    await gen.none(0.3)
    await gen.aclose()
    (state,) = store.data.values()
    assert state["known"] == ["04", "05", "06"] and state["floor"] == "03"
    gen = Events(make(tmp_path, store, start_from="all"))
    await gen.none()  # 01..03 are below the floor: not new
    await gen.aclose()


def test_payload_is_a_dataset_version_in_the_watcher_shape(tmp_path: Path):
    from airflow_ml_provider.dataset_version import DatasetVersion
    from airflow_ml_provider.hooks.datasets import PartitionedSource
    from airflow_ml_provider.triggers.dataset import newest_after, payload_of, version_of

    land(tmp_path, "0001")
    land(tmp_path, "0002")
    source = PartitionedSource(str(tmp_path))
    first, second = source.list_versions()
    payload = payload_of(second, "0001", source)
    assert list(payload) == [
        *("name", "uri", "version", "fingerprint", "discovered_at", "completed_at", "extra"),
        *("previous_version", "source", "root", "marker", "pattern", "conn_id"),
    ]
    assert version_of(second, "0001", source) == DatasetVersion.from_payload(payload)
    newest = newest_after(source, [first, second], None)
    assert newest is not None and newest.covered_versions == ("0001", "0002")
    assert newest.to_payload()["previous_version"] is None
