"""
The dataset-version payload: one type that every producer writes and every reader reads.

:class:`DatasetVersion` is built by the watcher (``triggers/dataset.py``) and the sensor
(``sensors/dataset.py``), and read back by ``versions.py`` (``dataset_version(...)``, the MLflow tags),
``tracking.py`` and the provider's listeners (``plugins/dataset_versions.py``). This module imports
nothing of Airflow, so a DAG file, a step or a test can use it for free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_ml_provider.vocabulary import TAG_DATASET_PREFIX

#: ``dag_run.conf`` key that names the version of a manual run or a re-run.
CONF_KEY = "dataset_version"
#: Prefix of the MLflow tags that record a run's dataset versions (``dataset.<asset>.version``).
TAG_PREFIX = TAG_DATASET_PREFIX
#: The fields recorded as tags (besides ``version`` and ``covered_versions``).
TAG_FIELDS = ("uri", "fingerprint", "completed_at")
#: The source's completeness rule, carried by a ``partitioned`` source's payload.
RULE_KEYS = ("marker", "pattern", "conn_id")
#: The payload's keys, in the order a watcher event has them.
PAYLOAD_KEYS = (
    "name",
    "uri",
    "version",
    "fingerprint",
    "discovered_at",
    "completed_at",
    "extra",
    "previous_version",
    "source",
    "root",
    *RULE_KEYS,
    "state_key",
    "covered_versions",
    "asset",
)


@dataclass(frozen=True)
class DatasetVersion:
    """
    One dataset version as it travels from the storage to a DAG run: the payload.

    **The payload** (:meth:`to_payload`) is one JSON object, the same wherever it is stored:

    ==================== ===========================================================================
    key                  meaning
    ==================== ===========================================================================
    ``name``             the dataset's name (by default the last component of its root)
    ``uri``              where this version's data is (a folder for a ``partitioned`` source)
    ``version``          the version's name, e.g. ``0007`` (the only key always present)
    ``fingerprint``      a digest that changes when the version's content changes
    ``discovered_at``    when the watcher or sensor first saw it complete (UTC, ISO 8601)
    ``completed_at``     when it was completed (its marker's modification time), null if unknown
    ``extra``            source facts: ``files`` and ``bytes`` (a ``partitioned`` source), ``bytes``
    ``previous_version`` the version delivered before it (null for the first one)
    ``source``           the source's kind: ``partitioned``, ``object`` or ``package.module:Class``
    ``root``             the source's root (or object) URI
    ``marker``           completion marker of a ``partitioned`` source (null: it has none)
    ``pattern``          its version folder name, ``*`` for the version (``version=*``)
    ``conn_id``          its storage connection
    ``state_key``        the watcher's state key (watcher events only)
    ``covered_versions`` every version the payload stands for, oldest first, when several
    ``asset``            the asset whose event carried it (set when a DAG run reads it)
    ==================== ===========================================================================

    A payload carries only the keys its producer knew, and a key can carry null:
    ``"marker": null`` means "this source has no marker", while no ``marker`` key (a version named in
    ``dag_run.conf``) means "the reading task's own marker applies". So :meth:`to_payload` writes the
    keys that are set plus those in :attr:`null_keys`, and keys this type does not know (a conf's own)
    ride along in :attr:`other`: a payload reads back exactly as it was written.

    **Where it is stored** (every shape :meth:`from_payload` accepts):

    - the asset event of a :class:`~airflow_ml_provider.triggers.dataset.DatasetVersionTrigger`
      watcher: ``event.extra == {"from_trigger": true, "payload": <payload>}`` (Airflow's wrapping);
    - the event of a deferred :class:`~airflow_ml_provider.sensors.dataset.DatasetVersionSensor`:
      ``{"status": "success", **payload}``;
    - the sensor's XCom (``return_value``) and the extra of each of its asset outlets' events:
      ``payload`` (with ``covered_versions``);
    - ``dag_run.conf["dataset_version"]``: a payload with at least ``version`` (usually ``uri``), or a
      bare version name.

    A DAG scheduled on the sensor's outlet asset therefore reads its version exactly as one
    scheduled on a watched asset: ``dataset_version(...)`` and the ``dataset.<asset>.*`` MLflow tags.
    """

    version: str
    name: str | None = None
    uri: str | None = None
    fingerprint: str | None = None
    discovered_at: str | None = None
    completed_at: str | None = None
    extra: Mapping[str, Any] | None = field(default=None, hash=False)
    previous_version: str | None = None
    source: str | None = None
    root: str | None = None
    marker: str | None = None
    pattern: str | None = None
    conn_id: str | None = None
    state_key: str | None = None
    covered_versions: tuple[str, ...] | None = None
    asset: str | None = None
    #: keys the payload carries with the value null (``previous_version`` of a first version ...)
    null_keys: frozenset[str] = field(default=frozenset(), repr=False)
    #: keys this type does not know, kept as given (a ``dag_run.conf`` payload's own keys)
    other: Mapping[str, Any] = field(default_factory=dict, repr=False, hash=False)

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def from_payload(cls, obj: Any) -> DatasetVersion:
        """
        Read a payload from any shape that carries one (see the class docstring).

        :param obj: a watcher's asset event extra, a sensor's event, XCom or outlet extra, a
            ``dag_run.conf["dataset_version"]`` value (an object or a bare version name).
        :raises ValueError: naming what is missing (no ``version``) or wrong (an error event).
        """
        if isinstance(obj, str | int) and not isinstance(obj, bool):
            return cls(version=str(obj))
        if not isinstance(obj, Mapping):
            raise ValueError(
                f"A dataset version must be a version name or an object with a 'version' key, "
                f"got {type(obj).__name__} {obj!r}."
            )
        if "status" in obj:  # a deferred sensor's event
            if obj["status"] != "success":
                raise ValueError(f"The event carries no dataset version: {obj.get('message') or obj!r}.")
            obj = {key: value for key, value in obj.items() if key != "status"}
        elif "version" not in obj and isinstance(obj.get("payload"), Mapping):
            obj = obj["payload"]  # the asset event a watcher fired
        return cls.of(obj)

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> DatasetVersion:
        """
        The version whose payload carries exactly ``values`` (a flat payload), None values included.

        :raises ValueError: when ``version`` is missing or ``covered_versions`` is not a list.
        """
        if values.get("version") in (None, ""):
            raise ValueError(
                f"A dataset-version payload needs 'version' (the version's name), which is missing; "
                f"it has {sorted(str(key) for key in values)}."
            )
        given = {key: value for key, value in values.items() if key in _FIELDS}
        other = {key: value for key, value in values.items() if key not in _FIELDS}
        given["version"] = str(given["version"])
        covered = given.get("covered_versions")
        if covered is not None:
            if not isinstance(covered, list | tuple):
                raise ValueError(f"covered_versions must be a list of version names, got {covered!r}.")
            given["covered_versions"] = tuple(str(v) for v in covered)
        if isinstance(given.get("extra"), Mapping):
            given["extra"] = dict(given["extra"])
        nulls = frozenset(key for key, value in given.items() if value is None)
        return cls(**given, null_keys=nulls, other=other)

    @classmethod
    def from_event_extra(cls, extra: Any) -> DatasetVersion | None:
        """
        The version an asset event carries, or None for an event that carries none.

        A watcher's event holds the payload under ``payload``; a sensor's outlet event holds it
        as the extra itself (then it needs ``version`` and ``uri``, so that an unrelated event that
        happens to have a ``version`` key is not taken for a dataset version). A malformed payload
        counts as none.
        """
        if not isinstance(extra, Mapping):
            return None
        nested = extra.get("payload")
        if isinstance(nested, Mapping) and nested.get("version") not in (None, ""):
            payload = nested
        elif extra.get("version") not in (None, "") and extra.get("uri"):
            payload = extra
        else:
            return None
        try:
            return cls.of(payload)
        except ValueError:
            return None

    # -- reading --------------------------------------------------------------------------------

    def to_payload(self) -> dict[str, Any]:
        """The payload, as JSON-able data: the keys that are set (or null on purpose), in order."""
        payload: dict[str, Any] = {}
        for key in PAYLOAD_KEYS:
            value = getattr(self, key)
            if value is None and key not in self.null_keys:
                continue
            if key == "covered_versions" and value is not None:
                value = list(value)
            elif key == "extra" and value is not None:
                value = dict(value)
            payload[key] = value
        payload.update(self.other)
        return payload

    @property
    def label(self) -> str:
        """The name the run's tags use: the asset that carried it, else the dataset's name."""
        return str(self.asset or self.name or "")

    @property
    def files(self) -> int | None:
        """Number of data files, when the source counted them."""
        value = (self.extra or {}).get("files")
        return int(value) if value is not None else None

    @property
    def size_bytes(self) -> int | None:
        """Bytes of data, when the source measured them."""
        value = (self.extra or {}).get("bytes")
        return int(value) if value is not None else None

    def mlflow_tags(self, covered: Iterable[str] = ()) -> dict[str, str]:
        """
        The MLflow tags that record this version on a DAG run's parent run.

        ``dataset.<label>.version``, ``.uri``, ``.fingerprint``, ``.completed_at`` when set, and
        ``.covered_versions`` when ``covered`` (the run's versions of that asset) lists more than one.
        """
        prefix = f"{TAG_PREFIX}{self.label}." if self.label else TAG_PREFIX
        tags = {f"{prefix}version": self.version}
        for name in TAG_FIELDS:
            value = getattr(self, name)
            if value:
                tags[f"{prefix}{name}"] = str(value)
        covered = list(covered)
        if len(covered) > 1:
            tags[f"{prefix}covered_versions"] = ",".join(covered)
        return tags


_FIELDS = frozenset(PAYLOAD_KEYS)


def version_in_uri(uri: str | None, pattern: str = "version=*") -> str | None:
    """
    The version a URI names by its version folder: ``"0001"`` for ``.../holdout/version=0001`` or
    ``.../version=0001/part-00000.csv``; None when no component of it matches ``pattern``.

    :param uri: a local path or any fsspec URI.
    :param pattern: a version folder's name, one ``*`` standing for the version.
    """
    if not uri:
        return None
    prefix, _, suffix = pattern.partition("*")
    path = str(uri).split("://", 1)[-1].split("?", 1)[0]
    for part in reversed([p for p in path.split("/") if p]):
        if part.startswith(prefix) and part.endswith(suffix) and len(part) > len(prefix) + len(suffix):
            return part[len(prefix) : len(part) - len(suffix)]
    return None
