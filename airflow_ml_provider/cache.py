"""
The step cache: skip a step whose inputs did not change, reusing an earlier run's result.

A step's **cache key** is a digest of what determines its output: the step, its spec (without
what changes from run to run: scratch paths, run ids, titles), a fingerprint of each input it
reads (dataset files, schema and statistics files), the user code it calls (the source file of a
``run_fn`` or of a ``module:function`` step) and the provider version. A run that computed the
step records the key as the tag ``airflow_ml.cache_key`` and its XCom value as the artifact
``cache/result.json``. A later task with the same key, in the same experiment, reuses that
result when the run FINISHED and its artifacts still exist.

Fingerprints are cheap: names, sizes and modification times (or the store's ETag/MD5) for data
files, content digests for small files (schemas, statistics), never a read of the data itself.
Rewriting a file changes its mtime, so a changed input always misses.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_ml_provider import __version__
from airflow_ml_provider.vocabulary import (
    ARTIFACT_CACHE_RESULT,
    TAG_CACHE_HIT,
    TAG_CACHE_KEY,
    TAG_CACHE_KEY_REUSED,
    TAG_CACHE_SOURCE_RUN_ID,
)

# Re-exported under the names operators/_cache.py and the tests import them by.
from airflow_ml_provider.vocabulary import TAG_CACHE_SOURCE_URL as TAG_CACHE_SOURCE_URL
from airflow_ml_provider.vocabulary import XCOM_CACHE_SOURCE_URL as XCOM_CACHE_SOURCE_URL

if TYPE_CHECKING:
    from airflow_ml_provider.tracking import TaskRun

log = logging.getLogger(__name__)

# MLflow run statuses of a run that ended (with or without its gate passing).
ENDED = ("FINISHED", "FAILED", "KILLED")
TAG_CACHE_SOURCE = TAG_CACHE_SOURCE_RUN_ID
# Files up to this size are fingerprinted by content; larger ones by size and mtime.
CONTENT_DIGEST_MAX_BYTES = 8 * 1024 * 1024
MISSING = "missing"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _local_path(uri: str) -> str | None:
    if uri.startswith("file://"):
        return uri[len("file://") :]
    if "://" in uri or uri.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        return None
    return uri


def _file_entry(path: str, name: str) -> str:
    st = os.stat(path)
    if st.st_size <= CONTENT_DIGEST_MAX_BYTES:
        with open(path, "rb") as handle:
            return f"{name}\x1f{st.st_size}\x1fsha256:{hashlib.sha256(handle.read()).hexdigest()}"
    return f"{name}\x1f{st.st_size}\x1fmtime:{st.st_mtime_ns}"


def fingerprint(uri: str | None) -> str:
    """
    A fingerprint of a file or folder (every file under it, hidden ones included) or ``"missing"``.

    MLflow URIs (``runs:/``, ``models:/m-<id>``) name immutable things: the URI is its own
    fingerprint. Other remote URIs are listed through fsspec (size and ETag/MD5/mtime per file).

    :param uri: a local path, ``file://`` URI or any fsspec URI.
    """
    if not uri:
        return MISSING
    uri = str(uri)
    if uri.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        return f"uri:{uri}"
    path = _local_path(uri)
    if path is None:
        return _remote_fingerprint(uri)
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isfile(path):
        return _sha(_file_entry(path, os.path.basename(path)))
    if not os.path.isdir(path):
        return MISSING
    entries = []
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(folder, name)
            entries.append(_file_entry(full, os.path.relpath(full, path)))
    return _sha("\n".join(entries))


def _remote_fingerprint(uri: str) -> str:
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(uri)
    if not fs.exists(path):
        return MISSING
    found = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    entries = []
    for name in sorted(found):
        info = found[name]
        stamp = info.get("ETag") or info.get("md5Hash") or info.get("mtime") or info.get("LastModified")
        entries.append(f"{name}\x1f{info.get('size')}\x1f{stamp}")
    return _sha("\n".join(entries))


def code_fingerprint(reference: str) -> str | None:
    """
    The digest of the source file of ``package.module:function``; None for the provider's own steps
    (covered by the provider version) or when the module has no source file.
    """
    module = reference.split(":", 1)[0]
    if module.startswith("airflow_ml_provider."):
        return None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    if not origin or not os.path.isfile(origin):
        return None
    with open(origin, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def cache_key(
    step: str,
    spec: Mapping[str, Any],
    *,
    inputs: Mapping[str, str | None] | None = None,
    code: Iterable[str] = (),
    volatile: Iterable[str] = (),
    content_only: Iterable[str] = (),
) -> str:
    """
    The cache key of a step.

    :param step: the step's name (or ``module:function``).
    :param spec: its spec; the keys in ``inputs`` and ``volatile`` are left out of it.
    :param inputs: spec key -> the URI it reads; each is keyed by the URI and its :func:`fingerprint`.
    :param code: ``module:function`` references of user code the step calls.
    :param volatile: spec keys that differ between runs without changing the output.
    :param content_only: keys of ``inputs`` keyed by their fingerprint alone (a local copy whose
        path changes from run to run, e.g. statistics fetched from MLflow).
    """
    inputs = dict(inputs or {})
    skipped = set(volatile) | set(inputs)
    stable = {k: v for k, v in spec.items() if k not in skipped}
    document = {
        "step": step,
        "spec": stable,
        "inputs": {
            name: [None if name in set(content_only) else uri, fingerprint(uri)]
            for name, uri in sorted(inputs.items())
        },
        "code": {ref: code_fingerprint(ref) for ref in sorted(set(code))},
        "provider": __version__,
    }
    return _sha(json.dumps(document, sort_keys=True, default=str))


@dataclass(frozen=True)
class CacheHit:
    """A finished run that computed the step with the same key, and its XCom value."""

    run_id: str
    url: str | None
    result: Any
    # The source run's metrics (last values), copied onto the hit's run so runs compare in MLflow.
    metrics: dict[str, float] = field(default_factory=dict)


def find_hit(run: TaskRun, key: str, required_artifacts: Iterable[str] = ()) -> CacheHit | None:
    """
    The newest ended run of ``run``'s experiment tagged with ``key`` whose artifacts still exist.

    A run is tagged with the key only once its result is recorded (:func:`record`), after the
    step's artifacts are logged; so a FAILED source is one whose gate failed on a complete result
    (anomalies, a candidate not blessed), which a re-run on the same inputs reuses and fails on
    the same way. A RUNNING source may be a try still applying its policy: passed over.

    :param required_artifacts: artifact folders the source run must still hold (besides the
        cached result); a source whose artifacts were deleted is passed over, with a log line.
    """
    hook = run.hook
    found = hook.find_runs(run.experiment_id, {TAG_CACHE_KEY: key})
    candidates = sorted(
        (r for r in found if r.info.status in ENDED and r.info.run_id != run.run_id),
        key=lambda r: r.info.start_time or 0,
        reverse=True,
    )
    for source in candidates:
        source_id = str(source.info.run_id)
        # The cached result itself is checked by downloading it (_read_result), not listed first.
        missing = [path for path in required_artifacts if not hook.client.list_artifacts(source_id, path)]
        if missing:
            log.info(
                "Cache: run %s had this key but its artifacts %s are gone; not reusing it", source_id, missing
            )
            continue
        document = _read_result(run, source_id)
        if document is None:
            continue
        metrics = {str(k): float(v) for k, v in (source.data.metrics or {}).items()}
        return CacheHit(source_id, hook.run_url(run.experiment_id, source_id), document["result"], metrics)
    return None


def _read_result(run: TaskRun, source_id: str) -> dict[str, Any] | None:
    try:
        document = run.hook.load_json_artifact(source_id, ARTIFACT_CACHE_RESULT)
        if not isinstance(document, dict) or "result" not in document:
            raise ValueError("no result in it")
        return document
    except Exception as err:
        log.info("Cache: could not read the result of run %s (%s); not reusing it", source_id, err)
        return None


def record(run: TaskRun, key: str, step: str, result: Any) -> None:
    """Store ``result`` (the XCom value) with ``run`` and tag it with ``key``: a source from now on."""
    run.hook.client.log_text(
        run.run_id,
        json.dumps({"step": step, "key": key, "result": result}, default=str),
        ARTIFACT_CACHE_RESULT,
    )
    run.set_tags({TAG_CACHE_KEY: key, TAG_CACHE_HIT: "false"})


def record_hit(run: TaskRun, key: str, hit: CacheHit) -> None:
    """Tag ``run`` as reusing ``hit``'s result (and log its metrics again, for the run's charts)."""
    tags = {TAG_CACHE_HIT: "true", TAG_CACHE_SOURCE_RUN_ID: hit.run_id, TAG_CACHE_KEY_REUSED: key}
    if hit.url:
        tags[TAG_CACHE_SOURCE_URL] = hit.url
    run.set_tags(tags)
    if hit.metrics:
        run.log_metrics(hit.metrics)
    run.flush()
