"""
Is a dataset version complete? The check every task that reads a version makes before it starts.

The rule is the watcher's (:func:`~airflow_ml_provider.hooks.datasets.folder_completion`), applied
to a URI a task was given, however the version reached the run (a watcher's event,
``dag_run.conf``, a sensor, a template):

- a **folder** is complete once its completion marker (``_SUCCESS`` by default) is in it, whatever
  its name: a plain folder of data files with no marker may still be being written;
- a **file inside a version folder** (a folder whose name fits the source's pattern, ``version=*``
  by default) is as complete as that folder;
- any **other single file** is one object, complete once it exists (object stores write an object
  atomically; this is how :class:`~airflow_ml_provider.hooks.datasets.ObjectSource` sees it);
- a URI that does not exist is not judged: the step reports the missing input in its own words
  (and a folder only the pods mount may not exist on the Airflow worker).

For the version a :class:`~airflow_ml_provider.triggers.dataset.DatasetVersionTrigger` delivered,
the source's own rule (its ``marker``, ``pattern`` and ``conn_id``, carried in the event payload)
applies to that version's URI and anything inside it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_ml_provider.exceptions import DatasetVersionIncomplete
from airflow_ml_provider.hooks.datasets import (
    DEFAULT_MARKER,
    DEFAULT_PATTERN,
    _iso_from_epoch,
    _local_root,
    _mtime,
    _storage,
    folder_completion,
    folder_files,
)

log = logging.getLogger(__name__)

OPT_OUT = "completion_marker=None"
# URIs of things that are not dataset versions (models, MLflow artifacts): never checked.
EXEMPT_SCHEMES = ("models:", "runs:", "mlflow-artifacts:")


@dataclass(frozen=True)
class VersionState:
    """
    What the storage says about a URI a task reads.

    :param uri: the URI as given.
    :param folder: the version folder whose marker decides; None for a single object.
    :param marker: the completion marker looked for (None: none required).
    :param exists: whether the URI exists.
    :param complete: whether it is complete by the rule above.
    :param completed_at: when it was completed (the marker's time; a lone object's time), UTC ISO 8601.
    """

    uri: str
    folder: str | None
    marker: str | None
    exists: bool
    complete: bool
    completed_at: str | None = None


def _is_version_folder(folder: str, pattern: str) -> bool:
    prefix, _, suffix = pattern.partition("*")
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    return re.fullmatch(f"{re.escape(prefix)}.+{re.escape(suffix)}", name) is not None


def _stat(uri: str, conn_id: str | None) -> tuple[str, float | None] | None:
    """``("directory" | "file", mtime)`` of ``uri``, or None when it does not exist."""
    local = _local_root(os.path.expanduser(uri) if "://" not in uri else uri)
    if local is not None:
        try:
            st = os.stat(local)
        except FileNotFoundError:
            return None
        return ("directory" if os.path.isdir(local) else "file"), st.st_mtime
    fs, path = _storage(uri, conn_id)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    return ("directory" if info.get("type") == "directory" else "file"), _mtime(info)


def inspect_version(
    uri: str,
    *,
    marker: str | None = DEFAULT_MARKER,
    pattern: str = DEFAULT_PATTERN,
    conn_id: str | None = None,
) -> VersionState:
    """
    Whether ``uri`` (a version folder, a file in one, or a single object) is complete, and since when.

    :param marker: the completion marker; None to take any existing folder as complete.
    :param pattern: the name of a version folder, one ``*`` standing for the version.
    :param conn_id: the Airflow connection of the storage (ObjectStoragePath), if it needs one.
    :raises OSError, ValueError, ImportError: the storage cannot be reached or is not installed.
    """
    found = _stat(uri, conn_id)
    if found is None:
        return VersionState(uri, None, marker, exists=False, complete=False)
    kind, mtime = found
    folder = uri.rstrip("/") or uri
    if kind == "file":
        parent = folder.rsplit("/", 1)[0] if "/" in folder.split("://", 1)[-1] else ""
        if not parent or not _is_version_folder(parent, pattern):
            return VersionState(
                uri, None, marker, exists=True, complete=True, completed_at=_iso_from_epoch(mtime)
            )
        folder = parent
    files = folder_files(os.path.expanduser(folder) if "://" not in folder else folder, conn_id)
    complete, completed = folder_completion({name: mtime for name, _, mtime in files}, marker)
    return VersionState(uri, folder, marker, True, complete, _iso_from_epoch(completed) if complete else None)


def check_version_complete(
    uri: str,
    *,
    marker: str | None = DEFAULT_MARKER,
    pattern: str = DEFAULT_PATTERN,
    conn_id: str | None = None,
    what: str | None = None,
) -> VersionState | None:
    """
    Raise :class:`~airflow_ml_provider.exceptions.DatasetVersionIncomplete` when ``uri`` is an
    incomplete dataset version, naming the folder and the missing marker; return what was found.

    :param marker: the completion marker; None checks nothing (data that never gets a marker).
    :param what: how messages name the input, e.g. ``"Task 'train': train_uri"``.
    """
    if marker is None or uri.startswith(EXEMPT_SCHEMES):
        return None
    subject = what or "Input"
    hint = (
        f"for data that never gets a marker, set {OPT_OUT} on the task "
        f"(or default_args={{'completion_marker': None}} for the whole DAG)"
    )
    try:
        state = inspect_version(uri, marker=marker, pattern=pattern, conn_id=conn_id)
    except (OSError, ValueError, ImportError) as err:
        raise DatasetVersionIncomplete(
            uri,
            marker,
            f"{subject} {uri}: cannot tell whether this dataset version is complete (looking for its "
            f"completion marker {marker!r}): {type(err).__name__}: {err}. Make the storage reachable from "
            f"the Airflow worker, or, {hint}.",
        ) from err
    if not state.exists:
        log.info("%s %s does not exist here; leaving it to the step to report.", subject, uri)
        return state
    if not state.complete:
        folder = state.folder or uri
        raise DatasetVersionIncomplete(
            folder,
            marker,
            f"{subject} {uri}: dataset version folder {folder} is incomplete: its completion marker "
            f"{marker!r} ({folder}/{marker}) is missing, so it may still be being written. Nothing was "
            f"read. Wait until the producer writes {marker!r} (a retry of the task checks again), or, "
            f"{hint}.",
        )
    return state


def _within(uri: str, root: str) -> bool:
    uri, root = uri.rstrip("/"), root.rstrip("/")
    return bool(root) and (uri == root or uri.startswith(root + "/"))


def completion_rule(
    uri: str, payload: Mapping[str, Any] | None, marker: str | None
) -> tuple[str | None, str, str | None]:
    """
    ``(marker, pattern, conn_id)`` to check ``uri`` with: the source's own rule when ``uri`` is the
    run's delivered version (``payload``) or inside it and the payload carries one, else ``marker``.
    """
    if not payload or not _within(uri, str(payload.get("uri") or "")):
        return marker, DEFAULT_PATTERN, None
    source_marker = payload["marker"] if "marker" in payload else marker
    return source_marker, str(payload.get("pattern") or DEFAULT_PATTERN), payload.get("conn_id")


def check_inputs(
    task_id: str,
    inputs: Mapping[str, Any],
    marker: str | None,
    payload: Mapping[str, Any] | None,
) -> None:
    """
    Refuse any incomplete dataset version among a task's ``inputs`` (argument name -> URI).

    :param marker: the task's ``completion_marker``; None checks nothing.
    :param payload: the run's dataset version (see :func:`~airflow_ml_provider.versions.triggering_version`).
    """
    if marker is None:
        return
    if not isinstance(marker, str) or not marker or "/" in marker or marker in {".", ".."}:
        raise ValueError(
            f"Task {task_id!r}: completion_marker must be a file name (e.g. '_SUCCESS') or None, got {marker!r}."
        )
    for name, uri in inputs.items():
        if not uri or not isinstance(uri, str):
            continue
        rule_marker, pattern, conn_id = completion_rule(uri, payload, marker)
        check_version_complete(
            uri, marker=rule_marker, pattern=pattern, conn_id=conn_id, what=f"Task {task_id!r}: {name}"
        )


def source_completed_at(payload: Mapping[str, Any]) -> tuple[str | None, str]:
    """
    When the payload's version was completed, read from its storage (the marker's time); with the
    reason when it cannot be told. For a run whose ``dag_run.conf`` named a version without
    ``completed_at``.
    """
    uri = payload.get("uri")
    if not uri or not isinstance(uri, str):
        return None, "the version has no 'uri' to read its completion marker from"
    marker, pattern, conn_id = completion_rule(uri, payload, DEFAULT_MARKER)
    try:
        state = inspect_version(uri, marker=marker, pattern=pattern, conn_id=conn_id)
    except (OSError, ValueError, ImportError) as err:
        return None, f"its storage could not be read ({type(err).__name__}: {err})"
    if not state.exists:
        return None, f"{uri} does not exist"
    if not state.complete:
        return None, f"{state.folder or uri} has no completion marker {marker!r}"
    if state.completed_at is None:
        return None, f"the storage reports no modification time for {uri}"
    return state.completed_at, ""
