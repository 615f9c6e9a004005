"""Fire once per new dataset version: an event trigger for AssetWatcher, and the sensor's deferral."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_ml_provider.dataset_version import RULE_KEYS, DatasetVersion
from airflow_ml_provider.hooks.datasets import (
    DEFAULT_MARKER,
    DEFAULT_PATTERN,
    DatasetVersionSource,
    source_from_spec,
)
from airflow_ml_provider.hooks.datasets import DatasetVersion as ListedVersion
from airflow_ml_provider.vocabulary import STATE_DELIVERED_SUFFIX, STATE_WATCHER_PREFIX

log = logging.getLogger(__name__)

START_FROM = ("latest", "all", "new")
STATE_KEY_PREFIX = STATE_WATCHER_PREFIX
# The watermark is written this long after an event was handed to the triggerer: by then the
# triggerer has sent it to the database (it syncs about every second). Writing it any earlier
# could lose a version on a crash; see docs/triggering.md ("Delivery guarantees").
COMMIT_DELAY_SECONDS = 3.0
MAX_BACKOFF_SECONDS = 60.0
# Version names kept in the watermark; older ones are summarised by a floor.
MAX_KNOWN_VERSIONS = 2000
DELIVERED_SUFFIX = STATE_DELIVERED_SUFFIX


def delivered_key(state_key: str) -> str:
    """State key of the versions the provider's listener recorded as stored with their event."""
    return state_key + DELIVERED_SUFFIX


def version_of(found: ListedVersion, previous: str | None, source: DatasetVersionSource) -> DatasetVersion:
    """The payload of a version the source listed: what a DAG run reads back from its asset event."""
    return DatasetVersion.of(
        {
            **found.to_dict(),
            "previous_version": previous,
            "source": source.kind,
            "root": getattr(source, "uri", None),
            # The source's completeness rule, which the tasks reading this version apply too.
            **{key: getattr(source, key) for key in RULE_KEYS if hasattr(source, key)},
        }
    )


def payload_of(found: ListedVersion, previous: str | None, source: DatasetVersionSource) -> dict[str, Any]:
    """:func:`version_of` as the JSON payload."""
    return version_of(found, previous, source).to_payload()


def is_after(source: DatasetVersionSource, version: str, after: str | None) -> bool:
    """Whether ``version`` is ordered after ``after`` (every version is, when ``after`` is None)."""
    if after is None:
        return True
    try:
        return bool(source.sort_key(version) > source.sort_key(after))
    except (TypeError, ValueError):
        return version > after


def newest_after(
    source: DatasetVersionSource, versions: list[ListedVersion], after: str | None
) -> DatasetVersion | None:
    """The newest version ordered after ``after``, listing every such version in ``covered_versions``."""
    newer = [v for v in versions if v.version != after and is_after(source, v.version, after)]
    if not newer:
        return None
    return replace(version_of(newer[-1], after, source), covered_versions=tuple(v.version for v in newer))


class _Watermark:
    """The versions already delivered: a set of names plus a floor below which all count as seen."""

    def __init__(self, source: DatasetVersionSource, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.source = source
        self.known: set[str] = set(state.get("known") or [])
        self.floor: str | None = state.get("floor")
        self.last: dict[str, Any] | None = state.get("last")
        self.initialised = bool(state)
        newest = max(self.known, key=self._key, default=None)
        if newest is not None and newest != (self.last or {}).get("version"):
            # Delivered after the last commit (recorded by the listener): it is the previous one now.
            self.last = {"version": newest}

    def is_new(self, version: str) -> bool:
        if version in self.known:
            return False
        if self.floor is None:
            return True
        try:
            return bool(self.source.sort_key(version) > self.source.sort_key(self.floor))
        except (TypeError, ValueError):
            return True

    def add(self, payload: dict[str, Any]) -> None:
        self.known.add(payload["version"])
        self.last = payload
        self.initialised = True

    def mark_seen(self, versions: list[ListedVersion]) -> None:
        self.known.update(v.version for v in versions)
        self.initialised = True

    def to_state(self) -> dict[str, Any]:
        ordered = sorted(self.known, key=self._key)
        if len(ordered) > MAX_KNOWN_VERSIONS:
            dropped, ordered = ordered[:-MAX_KNOWN_VERSIONS], ordered[-MAX_KNOWN_VERSIONS:]
            self.floor = max([dropped[-1], self.floor] if self.floor else [dropped[-1]], key=self._key)
            self.known = set(ordered)
        return {"identity": self.source.identity(), "known": ordered, "floor": self.floor, "last": self.last}

    def _key(self, version: str) -> Any:
        try:
            return (0, self.source.sort_key(version))
        except (TypeError, ValueError):
            return (1, version)


class DatasetVersionTrigger(BaseEventTrigger):
    """
    Poll a dataset's versions and fire one event per new complete version, in order.

    Use it as an asset watcher so that a new version starts the DAGs scheduled on the asset::

        Asset("churn", uri="s3://lake/churn", watchers=[
            AssetWatcher(name="churn_versions", trigger=DatasetVersionTrigger("s3://lake/churn", conn_id="aws"))
        ])

    The versions already delivered (the watermark) are kept in the asset's state store, so a
    triggerer restart neither loses nor repeats a version. Storage errors are logged and retried
    with backoff; they never end the trigger. The event payload is a
    :class:`~airflow_ml_provider.dataset_version.DatasetVersion` (``version``, ``uri``,
    ``fingerprint``, ``previous_version``, ``completed_at`` ... and ``state_key``).

    :param uri: the dataset's root (partitioned) or object (``source="object"``). Templated.
    :param source: ``partitioned`` (one folder per version), ``object`` (one object whose
        fingerprint changes), or ``package.module:Class`` of a registered source.
    :param pattern: folder name of a version, ``*`` standing for the version (``version=*``).
    :param ordering: ``lexical``, ``numeric`` or ``timestamp``.
    :param marker: completion marker inside a version folder (``_SUCCESS``); None: none.
    :param conn_id: Airflow connection for the storage (ObjectStoragePath).
    :param name: the dataset's name in payloads and logs; defaults to the root's last component.
    :param poll_interval: seconds between polls.
    :param start_from: on the very first poll, with no watermark yet: ``latest`` fires for the
        newest existing version only, ``all`` for every existing version, ``new`` for none.
    :param source_options: extra keyword arguments for a custom source.
    :param after_version: for a deferred sensor: fire once, for the newest version ordered after
        this one (any version when None), then stop.
    :param fire_once: stop after the first event (what a deferred sensor wants).
    """

    template_fields = ("uri",)

    def __init__(
        self,
        uri: str,
        *,
        source: str = "partitioned",
        pattern: str = DEFAULT_PATTERN,
        ordering: str = "lexical",
        marker: str | None = DEFAULT_MARKER,
        conn_id: str | None = None,
        name: str | None = None,
        poll_interval: float = 5.0,
        start_from: str = "latest",
        source_options: dict[str, Any] | None = None,
        after_version: str | None = None,
        fire_once: bool = False,
    ) -> None:
        super().__init__()
        self.uri = uri
        self.source = source
        self.pattern = pattern
        self.ordering = ordering
        self.marker = marker
        self.conn_id = conn_id
        self.name = name
        self.poll_interval = poll_interval
        self.start_from = start_from
        self.source_options = source_options
        self.after_version = after_version
        self.fire_once = fire_once
        self._lister: Any = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "uri": self.uri,
                "source": self.source,
                "pattern": self.pattern,
                "ordering": self.ordering,
                "marker": self.marker,
                "conn_id": self.conn_id,
                "name": self.name,
                "poll_interval": self.poll_interval,
                "start_from": self.start_from,
                "source_options": self.source_options,
                "after_version": self.after_version,
                "fire_once": self.fire_once,
            },
        )

    # -- building blocks ------------------------------------------------------------------------

    def build_source(self) -> DatasetVersionSource:
        """The source these arguments describe; ValueError naming the bad argument."""
        if self.start_from not in START_FROM:
            raise ValueError(f"start_from must be one of {', '.join(START_FROM)}, got {self.start_from!r}.")
        if not isinstance(self.poll_interval, int | float) or self.poll_interval <= 0:
            raise ValueError(
                f"poll_interval must be a positive number of seconds, got {self.poll_interval!r}."
            )
        spec: dict[str, Any] = {
            "kind": self.source,
            "uri": self.uri,
            "conn_id": self.conn_id,
            "name": self.name,
        }
        if self.source == "partitioned":
            spec.update(pattern=self.pattern, ordering=self.ordering, marker=self.marker)
        spec.update(self.source_options or {})
        return source_from_spec(spec)

    def state_key(self, source: DatasetVersionSource) -> str:
        return STATE_KEY_PREFIX + hashlib.sha256(source.identity().encode()).hexdigest()[:24]

    def _stores(self) -> list[Any]:
        """The state accessors of the watched asset(s); one trigger may serve several assets."""
        store = self.asset_state_store
        if store is None:
            return []
        # AssetStateStoreAccessors exposes get/set only for a single asset; a trigger shared by
        # identical watchers on several assets keeps the same watermark in each of them.
        accessors = [*getattr(store, "_by_name", {}).values(), *getattr(store, "_by_uri", {}).values()]
        return accessors or [store]

    async def _load_state(self, key: str) -> dict[str, Any] | None:
        states = []
        delivered: set[str] = set()
        for accessor in self._stores():
            value = await accessor.aget(key)
            if isinstance(value, dict):
                states.append(value)
            # Versions whose events the database holds, recorded in the same transaction by the
            # provider's listener (plugins/dataset_versions.py): never fire those again.
            recorded = await accessor.aget(delivered_key(key))
            if isinstance(recorded, list):
                delivered.update(str(v) for v in recorded)
        if not states and not delivered:
            return None
        # Several assets: the smallest watermark wins, so no asset misses a version.
        state: dict[str, Any] = min(states, key=lambda s: len(s.get("known") or [])) if states else {}
        state["known"] = sorted({*(state.get("known") or []), *delivered})
        return state

    async def _save_state(self, key: str, state: dict[str, Any]) -> None:
        for accessor in self._stores():
            await accessor.aset(key, state)

    async def _list(self, source: DatasetVersionSource) -> list[ListedVersion]:
        if self._lister is None:
            from asgiref.sync import sync_to_async

            self._lister = sync_to_async(source.list_versions, thread_sensitive=False)
        try:
            return await self._lister()
        except FileNotFoundError:
            # A root that does not exist yet is a dataset with no versions yet.
            return []

    # -- the loop -------------------------------------------------------------------------------

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            source = self.build_source()
        except Exception as err:
            # An event trigger must not crash the triggerer; it says why, once, and waits.
            log.error("DatasetVersionTrigger for %s cannot start: %s", self.uri, err)
            if self.fire_once:
                yield TriggerEvent({"status": "error", "message": str(err), "uri": self.uri})
            return
        if self.fire_once:
            async for event in self._run_once(source):
                yield event
            return
        async for event in self._watch(source):
            yield event

    async def _poll(self, source: DatasetVersionSource, failures: int) -> list[ListedVersion] | None:
        """One listing, or None after logging why it failed."""
        try:
            return await self._list(source)
        except Exception as err:
            log.warning(
                "Dataset %s: listing %s failed (%s: %s); retrying (failure %d in a row)",
                source.name,
                self.uri,
                type(err).__name__,
                err,
                failures + 1,
            )
            return None

    def _delay(self, failures: int) -> float:
        return float(
            min(self.poll_interval * (2 ** min(failures, 10)), max(MAX_BACKOFF_SECONDS, self.poll_interval))
        )

    async def _run_once(self, source: DatasetVersionSource) -> AsyncIterator[TriggerEvent]:
        failures = 0
        while True:
            versions = await self._poll(source, failures)
            if versions is None:
                failures += 1
            else:
                failures = 0
                newest = newest_after(source, versions, self.after_version)
                if newest is not None:
                    yield TriggerEvent({"status": "success", **newest.to_payload()})
                    return
            await asyncio.sleep(self._delay(failures))

    async def _watch(self, source: DatasetVersionSource) -> AsyncIterator[TriggerEvent]:
        key = self.state_key(source)
        if not self._stores():
            log.warning(
                "Dataset %s: no asset state store (not running as an asset watcher?): the watermark "
                "lives in memory only, a restart starts again from start_from=%r.",
                source.name,
                self.start_from,
            )
        watermark: _Watermark | None = None
        pending: list[tuple[float, dict[str, Any]]] = []  # (handed over at, watermark then)
        failures = 0
        while True:
            try:
                if watermark is None:
                    watermark = _Watermark(source, await self._load_state(key))
                    log.info(
                        "Dataset %s: watching %s every %ss; %d versions already delivered, last %s",
                        source.name,
                        self.uri,
                        self.poll_interval,
                        len(watermark.known),
                        (watermark.last or {}).get("version"),
                    )
                settled = [p for p in pending if time.monotonic() - p[0] >= COMMIT_DELAY_SECONDS]
                if settled:
                    await self._save_state(key, settled[-1][1])
                    del pending[: len(settled)]
            except Exception as err:
                log.warning("Dataset %s: asset state store unavailable (%s); retrying", source.name, err)
                failures += 1
                await asyncio.sleep(self._delay(failures))
                continue
            versions = await self._poll(source, failures)
            if versions is None:
                failures += 1
            else:
                failures = 0
                first_poll = not watermark.initialised
                new = self._select_new(watermark, versions, source)
                if first_poll:
                    await self._save_first_watermark(key, watermark, source)
                for version in new:
                    previous = (watermark.last or {}).get("version")
                    payload = replace(version_of(version, previous, source), state_key=key).to_payload()
                    log.info(
                        "Dataset %s: new version %s (previous %s) at %s",
                        source.name,
                        version.version,
                        previous,
                        version.uri,
                    )
                    yield TriggerEvent(payload)
                    watermark.add(payload)
                if new or first_poll:
                    watermark.initialised = True
                    pending.append((time.monotonic(), watermark.to_state()))
            await asyncio.sleep(self._delay(failures))

    async def _save_first_watermark(
        self, key: str, watermark: _Watermark, source: DatasetVersionSource
    ) -> None:
        """
        Write the first watermark at once: the history ``start_from`` skipped, no event yet.

        It holds no event, so writing it early cannot lose a version; without it, a triggerer
        killed before the first delayed commit would start over with no watermark and take every
        version that landed meanwhile for history (``start_from="latest"``: all but the newest).
        """
        watermark.initialised = True
        try:
            await self._save_state(key, watermark.to_state())
        except Exception as err:  # the delayed commit writes it later
            log.warning("Dataset %s: could not store the first watermark yet (%s)", source.name, err)

    def _select_new(
        self, watermark: _Watermark, versions: list[ListedVersion], source: DatasetVersionSource
    ) -> list[ListedVersion]:
        """The versions to fire for now, oldest first; applies ``start_from`` on the first poll."""
        new = [v for v in versions if watermark.is_new(v.version)]
        if watermark.initialised or not new:
            return new
        if self.start_from == "all":
            return new
        chosen = new[-1:] if self.start_from == "latest" else []
        skipped = [v for v in new if v not in chosen]
        if skipped:
            log.info(
                "Dataset %s: first poll, start_from=%r: %d existing versions recorded as seen without an event",
                source.name,
                self.start_from,
                len(skipped),
            )
        watermark.mark_seen(skipped)
        return chosen
