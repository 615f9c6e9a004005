"""Dataset versions on any storage Airflow's ObjectStoragePath reaches (local, s3, gcs, ...).

A *source* lists the complete versions of one dataset, oldest first. Two are built in:

- ``partitioned``: one folder per version under a root (``version=0007/`` by default); a version
  counts only once its completion marker (``_SUCCESS``) exists;
- ``object``: a single object; a new version each time its fingerprint (etag, checksum, or size
  and modification time) changes.

More kinds (a Delta table version, a lakeFS commit) register with :func:`register_source` and are
named by ``source="package.module:Class"``; the trigger and sensor never change for them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar, Protocol
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

ORDERINGS = ("lexical", "numeric", "timestamp")
DEFAULT_PATTERN = "version=*"
DEFAULT_MARKER = "_SUCCESS"
# A version name is one path component: letters, digits and . _ : + - only, never "." or "..".
_SAFE_VERSION = re.compile(r"[A-Za-z0-9_.:+-]{1,200}")
ROOT_MTIME_SETTLE_SECONDS = 2.0
_COMPACT_TIMESTAMP = re.compile(r"^\d{8}(T?\d{4,6})?Z?$")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _iso_from_epoch(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(float(seconds), timezone.utc).isoformat(timespec="milliseconds")


def check_version_name(version: str) -> str | None:
    """Return why ``version`` is refused as a version name, or None when it is safe."""
    if not _SAFE_VERSION.fullmatch(version):
        return "only letters, digits and . _ : + - are allowed (no path separators)"
    if ".." in version or version in {"."}:
        return "'..' is not allowed in a version name"
    return None


@dataclass(frozen=True)
class DatasetVersion:
    """
    One complete version of a dataset, as a source found it.

    :param name: the dataset's name (by default the last component of its root URI).
    :param uri: where this version's data is (a folder for partitioned sources).
    :param version: the version's name, e.g. ``0007``.
    :param fingerprint: a digest that changes when the version's content changes.
    :param discovered_at: when this process first saw the version complete (UTC, ISO 8601).
    :param completed_at: when the version was completed (its marker's modification time), if known.
    :param extra: source-specific facts (file count, bytes ...), JSON-able.
    """

    name: str
    uri: str
    version: str
    fingerprint: str
    discovered_at: str = field(default_factory=utc_now)
    completed_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DatasetVersionSource(Protocol):
    """What the trigger and sensor need of a source. Methods block; call them from a thread."""

    kind: ClassVar[str]
    name: str

    def identity(self) -> str:
        """A stable string naming what is watched (kind and location), for state keys."""
        ...

    def list_versions(self) -> list[DatasetVersion]:
        """The complete versions now present, oldest first by the source's ordering."""
        ...

    def sort_key(self, version: str) -> Any:
        """Order key of a version name (the ordering the source was configured with)."""
        ...

    def to_spec(self) -> dict[str, Any]:
        """JSON-able arguments that rebuild this source through :func:`source_from_spec`."""
        ...


_SOURCES: dict[str, Callable[..., DatasetVersionSource]] = {}


def register_source(kind: str, factory: Callable[..., DatasetVersionSource]) -> None:
    """Make ``source=kind`` build ``factory(**options)``."""
    _SOURCES[kind] = factory


def source_from_spec(spec: Mapping[str, Any]) -> DatasetVersionSource:
    """
    Build a source from ``{"kind": ..., **options}``.

    ``kind`` is a registered name (``partitioned``, ``object``) or ``package.module:Class``.
    """
    options = dict(spec)
    kind = options.pop("kind", "partitioned")
    factory = _SOURCES.get(kind)
    if factory is None and isinstance(kind, str) and ":" in kind:
        import importlib

        module_name, _, attr = kind.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"Dataset source {kind!r} cannot be imported: {err}") from err
    if factory is None:
        raise ValueError(
            f"Unknown dataset source {kind!r}: use one of {sorted(_SOURCES)} or 'package.module:Class'."
        )
    return factory(**options)


def order_key(ordering: str, version: str) -> Any:
    """Sort key of ``version`` under ``ordering``; ValueError when it does not fit that ordering."""
    if ordering == "lexical":
        return version
    if ordering == "numeric":
        try:
            return float(version) if not version.lstrip("+-").isdigit() else int(version)
        except ValueError:
            raise ValueError("not a number (ordering='numeric')") from None
    if ordering == "timestamp":
        return _parse_timestamp(version).timestamp()
    raise ValueError(f"ordering must be one of {', '.join(ORDERINGS)}, got {ordering!r}")


def _parse_timestamp(text: str) -> datetime:
    candidate = text
    if _COMPACT_TIMESTAMP.fullmatch(text):
        digits = text.rstrip("Z").replace("T", "")
        fmt = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}.get(len(digits))
        if fmt:
            return datetime.strptime(digits, fmt).replace(tzinfo=timezone.utc)
    try:
        # Partition names often replace ':' (e.g. 2026-11-23T18-05-00); fromisoformat wants ':'.
        parsed = datetime.fromisoformat(candidate.replace("Z", "+00:00"))
    except ValueError:
        m = re.fullmatch(r"(\d{4}-\d{2}-\d{2})[T_ ](\d{2})-(\d{2})(?:-(\d{2}))?", text)
        if not m:
            raise ValueError("not a timestamp (ordering='timestamp')") from None
        parsed = datetime.fromisoformat(f"{m[1]}T{m[2]}:{m[3]}:{m[4] or '00'}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _local_root(uri: str) -> str | None:
    """The local folder of a plain path or ``file://`` URI; None for other storage."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file", "local") and parts.netloc in ("", "localhost"):
        return os.path.abspath(unquote(parts.path) if parts.scheme else uri)
    return None


def _storage(uri: str, conn_id: str | None) -> tuple[Any, str]:
    """The fsspec filesystem and in-store path of ``uri``, through Airflow's ObjectStoragePath."""
    from airflow.sdk import ObjectStoragePath

    path = ObjectStoragePath(uri, conn_id=conn_id)
    try:
        fs = path.fs  # Airflow's filesystem for the scheme, authenticated by conn_id
    except ValueError:
        fs = path.__wrapped__.fs  # a scheme fsspec knows but Airflow does not register
    return fs, path.path


def _entries(uri: str, conn_id: str | None) -> list[dict[str, Any]]:
    fs, path = _storage(uri, conn_id)
    return list(fs.ls(path, detail=True))


def _mtime(info: Mapping[str, Any]) -> float | None:
    value = info.get("mtime") or info.get("LastModified") or info.get("updated") or info.get("last_modified")
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return float(value) if value else None


def folder_files(uri: str, conn_id: str | None) -> list[tuple[str, int, float | None]]:
    """
    The files directly in folder ``uri``: ``(name, size, modification time)``.

    A local folder is read with ``os.scandir``; any other storage through ObjectStoragePath.
    """
    local = _local_root(uri)
    if local is not None:
        with os.scandir(local) as entries:
            return [(e.name, (st := e.stat()).st_size, st.st_mtime) for e in entries if e.is_file()]
    return [
        (str(info["name"]).rstrip("/").rsplit("/", 1)[-1], int(info.get("size") or 0), _mtime(info))
        for info in _entries(uri, conn_id)
        if info.get("type") == "file"
    ]


def folder_completion(files: Mapping[str, float | None], marker: str | None) -> tuple[bool, float | None]:
    """
    Whether a version folder holding ``files`` (name -> modification time) is complete, and when.

    The one rule of completeness, shared by the watcher (:class:`PartitionedSource`) and the tasks
    that read a version (:mod:`airflow_ml_provider.hooks.completeness`): complete once ``marker`` is
    there, completed at the marker's time; with no marker, complete, at its newest file's time.
    """
    if marker is None:
        return True, max((m for m in files.values() if m is not None), default=None)
    if marker not in files:
        return False, None
    return True, files[marker]


class _Warnings:
    """Log a refusal once per name, so a bad folder does not flood the log every poll."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def warn(self, key: str, message: str, *args: Any) -> None:
        if key not in self._seen:
            self._seen.add(key)
            log.warning(message, *args)


def _default_name(uri: str) -> str:
    tail = uri.rstrip("/").rsplit("/", 1)[-1]
    return tail or uri


class PartitionedSource:
    """
    One folder per version under ``uri``; a version is complete once its marker exists.

    :param uri: the root, e.g. ``/data/churn``, ``file:///data/churn``, ``s3://bucket/churn``.
    :param pattern: the folder name with one ``*`` standing for the version (default ``version=*``).
    :param ordering: ``lexical``, ``numeric`` or ``timestamp``: how versions are ordered.
    :param marker: completion marker inside a version folder (default ``_SUCCESS``); None to take
        every matching folder as complete (only safe when folders appear atomically).
    :param conn_id: Airflow connection for the storage (ObjectStoragePath), if it needs one.
    :param name: the dataset's name; defaults to the root's last component.
    """

    kind: ClassVar[str] = "partitioned"

    def __init__(
        self,
        uri: str,
        *,
        pattern: str = DEFAULT_PATTERN,
        ordering: str = "lexical",
        marker: str | None = DEFAULT_MARKER,
        conn_id: str | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(uri, str) or not uri.strip():
            raise ValueError(f"Dataset source: uri must be a non-empty path or URI, got {uri!r}.")
        if not isinstance(pattern, str) or pattern.count("*") != 1 or "/" in pattern:
            raise ValueError(
                f"Dataset source {uri!r}: pattern must be one folder name with exactly one '*' "
                f"standing for the version (e.g. 'version=*'), got {pattern!r}."
            )
        if ordering not in ORDERINGS:
            raise ValueError(
                f"Dataset source {uri!r}: ordering must be one of {', '.join(ORDERINGS)}, got {ordering!r}."
            )
        if marker is not None and (not marker or "/" in marker or marker in {".", ".."}):
            raise ValueError(f"Dataset source {uri!r}: marker must be a file name or None, got {marker!r}.")
        self.uri = uri.rstrip("/") or uri
        self.pattern = pattern
        self.ordering = ordering
        self.marker = marker
        self.conn_id = conn_id
        self.name = name or _default_name(self.uri)
        prefix, _, suffix = pattern.partition("*")
        self._regex = re.compile(f"^{re.escape(prefix)}(?P<version>.+){re.escape(suffix)}$")
        self._local = _local_root(self.uri)
        self._complete: dict[str, DatasetVersion] = {}
        self._listed: list[DatasetVersion] = []
        self._root_stamp: tuple[int, ...] = ()
        self._warnings = _Warnings()

    def identity(self) -> str:
        return f"partitioned|{self.uri}|{self.pattern}|{self.marker}"

    def to_spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "uri": self.uri,
            "pattern": self.pattern,
            "ordering": self.ordering,
            "marker": self.marker,
            "conn_id": self.conn_id,
            "name": self.name,
        }

    def sort_key(self, version: str) -> Any:
        return order_key(self.ordering, version)

    def _candidates(self) -> dict[str, str]:
        """Folder name -> version for every folder under the root that matches the pattern."""
        if self._local is not None:
            with os.scandir(self._local) as entries:
                names = [e.name for e in entries if e.is_dir()]
        else:
            names = [
                str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
                for e in _entries(self.uri, self.conn_id)
                if e.get("type") == "directory"
            ]
        found: dict[str, str] = {}
        for folder in names:
            match = self._regex.match(folder)
            if match is None or folder.startswith((".", "_")):
                continue  # not a version (hidden, temporary or unrelated folder)
            version = match["version"]
            problem = check_version_name(version)
            if problem is None:
                try:
                    self.sort_key(version)
                except ValueError as err:
                    problem = str(err)
            if problem:
                self._warnings.warn(
                    folder,
                    "Dataset %s: ignoring folder %r under %s: %s.",
                    self.name,
                    folder,
                    self.uri,
                    problem,
                )
                continue
            found[folder] = version
        return found

    def _inspect(self, folder: str, version: str) -> DatasetVersion | None:
        """The version when complete (marker present), else None; fingerprints its files once."""
        uri = f"{self.uri}/{folder}"
        files = folder_files(uri, self.conn_id)
        complete, completed = folder_completion({name: mtime for name, _, mtime in files}, self.marker)
        if not complete:
            return None
        digest = hashlib.sha256()
        for name, size, _ in sorted(files):
            if name != self.marker:
                digest.update(f"{name}\x1f{size}\n".encode())
        data = [f for f in files if f[0] != self.marker]
        return DatasetVersion(
            name=self.name,
            uri=uri,
            version=version,
            fingerprint=digest.hexdigest()[:32],
            completed_at=_iso_from_epoch(completed),
            extra={"files": len(data), "bytes": sum(size for _, size, _ in data)},
        )

    def list_versions(self) -> list[DatasetVersion]:
        stamp = self._unchanged_local_root()
        if stamp is None:
            return list(self._listed)
        candidates = self._candidates()
        for folder in [f for f in self._complete if f not in candidates]:
            log.info("Dataset %s: version folder %s disappeared from %s", self.name, folder, self.uri)
            del self._complete[folder]
        incomplete = False
        for folder, version in candidates.items():
            if folder in self._complete:
                continue
            try:
                found = self._inspect(folder, version)
            except FileNotFoundError:
                continue  # deleted between the listing and now
            if found is None:
                incomplete = True
            else:
                self._complete[folder] = found
        self._listed = sorted(self._complete.values(), key=lambda v: self.sort_key(v.version))
        # A root whose folders are all complete and whose mtime has not moved needs no new listing.
        self._root_stamp = stamp if not incomplete else ()
        return list(self._listed)

    def _unchanged_local_root(self) -> tuple[int, ...] | None:
        """None when a local root is unchanged since the last full listing, else its new stamp."""
        if self._local is None:
            return ()
        st = os.stat(self._local)
        stamp = (st.st_mtime_ns, st.st_ino)
        # Coarse file-system clocks: trust an unchanged mtime only once it is a few seconds old.
        settled = time.time() - st.st_mtime > ROOT_MTIME_SETTLE_SECONDS
        if settled and stamp == self._root_stamp:
            return None
        return stamp if settled else ()


class ObjectSource:
    """
    A single object; each change of its fingerprint is a new version.

    The fingerprint is the object's etag or checksum when the store reports one, else its size
    and modification time. The version name is the modification time (UTC, compact) when known,
    else the fingerprint.

    :param uri: the object, e.g. ``s3://bucket/exports/customers.parquet``.
    :param conn_id: Airflow connection for the storage, if it needs one.
    :param name: the dataset's name; defaults to the object's file name.
    """

    kind: ClassVar[str] = "object"

    def __init__(self, uri: str, *, conn_id: str | None = None, name: str | None = None) -> None:
        if not isinstance(uri, str) or not uri.strip() or uri.endswith("/"):
            raise ValueError(f"Dataset source (object): uri must name one object, got {uri!r}.")
        self.uri = uri
        self.conn_id = conn_id
        self.name = name or _default_name(uri)
        self._local = _local_root(uri)

    def identity(self) -> str:
        return f"object|{self.uri}"

    def to_spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "uri": self.uri, "conn_id": self.conn_id, "name": self.name}

    def sort_key(self, version: str) -> Any:
        return version

    def _stat(self) -> tuple[str, int, float | None] | None:
        if self._local is not None:
            try:
                st = os.stat(self._local)
            except FileNotFoundError:
                return None
            return f"{st.st_size}-{st.st_mtime_ns}", st.st_size, st.st_mtime
        fs, path = _storage(self.uri, self.conn_id)
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return None
        size = int(info.get("size") or 0)
        stamp = _mtime(info)
        tag = info.get("ETag") or info.get("etag") or info.get("checksum") or info.get("md5Hash")
        return (str(tag).strip('"') if tag else f"{size}-{stamp}"), size, stamp

    def list_versions(self) -> list[DatasetVersion]:
        found = self._stat()
        if found is None:
            return []
        tag, size, mtime = found
        fingerprint = hashlib.sha256(tag.encode()).hexdigest()[:32]
        if mtime is not None:
            moment = datetime.fromtimestamp(mtime, timezone.utc)
            version = moment.strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
        else:
            version = fingerprint[:16]
        return [
            DatasetVersion(
                name=self.name,
                uri=self.uri,
                version=version,
                fingerprint=fingerprint,
                completed_at=_iso_from_epoch(mtime),
                extra={"bytes": size},
            )
        ]


register_source(PartitionedSource.kind, PartitionedSource)
register_source(ObjectSource.kind, ObjectSource)
