"""The ``validate_data`` and ``infer_schema`` steps (JSON spec in, JSON result out)."""

from __future__ import annotations

import logging
import os
from typing import Any

from airflow_ml_provider.ml.validation import schema as schema_lib
from airflow_ml_provider.ml.validation.io import (
    StagedOutput,
    exists,
    find_data_files,
    no_rows_message,
    write_atomic,
)
from airflow_ml_provider.ml.validation.statistics import DEFAULT_CHUNK_ROWS, compute_statistics

log = logging.getLogger(__name__)

VALIDATE_KEYS = {
    "data_uri",
    "format",
    "schema_uri",
    "previous_statistics_uri",
    "serving_statistics_uri",
    "output_dir",
    "drift",
    "skew",
    "label",
    "engine",
    "beam_pipeline_args",
    "chunk_rows",
}
INFER_KEYS = {"data_uri", "format", "schema_uri", "overwrite", "chunk_rows"}
ENGINES = ("in_memory", "beam")
ARTIFACT_NAMES = (
    "statistics.pb",
    "anomalies.pbtxt",
    "anomalies.json",
    "schema.pbtxt",
    "report.html",
    "plots",
)
THRESHOLD_KEYS = {"categorical_linf", "numeric_jsd", "features"}


def _check_keys(step: str, spec: Any, allowed: set[str], required: tuple[str, ...]) -> None:
    if not isinstance(spec, dict):
        raise ValueError(f"{step}: spec must be a dict, got {type(spec).__name__}.")
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"{step}: unknown spec keys {sorted(unknown)}; allowed: {sorted(allowed)}.")
    for key in required:
        if not isinstance(spec.get(key), str) or not spec[key]:
            raise ValueError(f"{step}: spec key {key!r} is required (a path or URI string).")


def _check_common(step: str, spec: dict[str, Any]) -> None:
    if spec.get("format") not in (None, "csv", "parquet"):
        raise ValueError(
            f"{step}: spec key 'format' must be 'csv', 'parquet' or null, got {spec['format']!r}."
        )
    rows = spec.get("chunk_rows", DEFAULT_CHUNK_ROWS)
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
        raise ValueError(f"{step}: spec key 'chunk_rows' must be an int >= 1, got {rows!r}.")


def _thresholds(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - THRESHOLD_KEYS:
        raise ValueError(
            f"validate_data: spec key {key!r} must be a dict with keys from {sorted(THRESHOLD_KEYS)}, got {value!r}."
        )
    numbers = [v for k, v in value.items() if k != "features"] + list((value.get("features") or {}).values())
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in numbers):
        raise ValueError(f"validate_data: spec key {key!r}: thresholds must be numbers >= 0, got {value!r}.")
    return dict(value)


def _validate_spec(spec: Any) -> dict[str, Any]:
    _check_keys("validate_data", spec, VALIDATE_KEYS, ("data_uri", "output_dir"))
    _check_common("validate_data", spec)
    engine = spec.get("engine", "in_memory")
    if engine not in ENGINES:
        raise ValueError(f"validate_data: spec key 'engine' must be one of {list(ENGINES)}, got {engine!r}.")
    args = spec.get("beam_pipeline_args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError(f"validate_data: spec key 'beam_pipeline_args' must be a list of str, got {args!r}.")
    return {
        **spec,
        "engine": engine,
        "beam_pipeline_args": args,
        "drift": _thresholds("drift", spec.get("drift")),
        "skew": _thresholds("skew", spec.get("skew")),
        "label": str(spec.get("label", "label")),
        "chunk_rows": spec.get("chunk_rows", DEFAULT_CHUNK_ROWS),
    }


def _statistics(settings: dict[str, Any], staged: StagedOutput | None = None) -> tuple[Any, str]:
    """
    Compute statistics of ``data_uri``; a version without rows is an error.

    :param settings: the checked spec.
    :param staged: the staging directory (the beam engine writes its output there).
    """
    files = find_data_files(settings["data_uri"], settings.get("format"))
    if settings.get("engine") == "beam" and staged is not None:
        from airflow_ml_provider.ml.validation.beam import compute_statistics_beam

        stats = compute_statistics_beam(
            files, settings["beam_pipeline_args"], str(staged.tmp / "beam_statistics.pb")
        )
        os.remove(staged.tmp / "beam_statistics.pb")
    else:
        stats = compute_statistics(files, settings["chunk_rows"])
    if not stats.datasets or stats.datasets[0].num_examples == 0:
        raise ValueError(no_rows_message(files))
    return stats, files.format


def _schema(settings: dict[str, Any], stats: Any) -> tuple[Any, bool]:
    """Load the schema at ``schema_uri`` or infer one; return it and whether it must be stored."""
    uri = settings.get("schema_uri")
    if uri and exists(uri):
        return schema_lib.load_schema(uri), False
    return schema_lib.infer_schema_from_stats(stats), bool(uri)


def _write_artifacts(
    staged: StagedOutput, stats: Any, schema: Any, anomalies: Any, result: dict[str, Any], previous: Any
) -> dict[str, Any]:
    """
    Write statistics, anomalies, schema, report and plots into the staging directory.

    :param staged: the staging directory.
    :param stats: statistics of this version.
    :param schema: the schema used for validation.
    :param anomalies: the Anomalies proto.
    :param result: the result so far (for the report).
    :param previous: previous statistics, or None.
    """
    from google.protobuf import json_format, text_format

    from airflow_ml_provider.ml.validation.report import write_report

    (staged.tmp / "statistics.pb").write_bytes(stats.SerializeToString())
    (staged.tmp / "anomalies.pbtxt").write_text(text_format.MessageToString(anomalies))
    (staged.tmp / "anomalies.json").write_text(json_format.MessageToJson(anomalies))
    (staged.tmp / "schema.pbtxt").write_text(text_format.MessageToString(schema))
    plots = write_report(staged.tmp, result, stats, previous)
    return {
        "statistics": staged.final_path("statistics.pb"),
        "anomalies_text": staged.final_path("anomalies.pbtxt"),
        "anomalies_json": staged.final_path("anomalies.json"),
        "schema": staged.final_path("schema.pbtxt"),
        "report_html": staged.final_path("report.html"),
        "plots": [staged.final_path(os.path.join("plots", name)) for name in plots],
    }


def _baselines(settings: dict[str, Any]) -> tuple[Any | None, Any | None]:
    previous = settings.get("previous_statistics_uri")
    serving = settings.get("serving_statistics_uri")
    return (
        schema_lib.load_statistics(previous, "previous_statistics_uri") if previous else None,
        schema_lib.load_statistics(serving, "serving_statistics_uri") if serving else None,
    )


def _metrics(result: dict[str, Any]) -> dict[str, float]:
    metrics = {key: float(result[key]) for key in ("example_count", "anomaly_count", "feature_count")}
    metrics.update({f"drift.{name}": score for name, score in result["drift"].items()})
    metrics.update({f"skew.{name}": score for name, score in result["skew"].items()})
    return metrics


def validate_data(spec: dict[str, Any]) -> dict[str, Any]:
    """
    Compute TFDV statistics of a dataset version and validate them against a schema and baselines.

    Anomalies are reported in the result, not raised; bad input (missing, empty, header-only,
    corrupt or mis-formatted files, a schema or statistics file that does not parse) raises
    ``FileNotFoundError`` / ``ValueError`` naming the input. Artifacts are written into a hidden
    staging directory and moved into ``output_dir`` only when everything succeeded.

    :param spec: a dict with the keys below.

        - ``data_uri`` (required): a version directory (its visible ``*.csv`` / ``*.parquet``
          files; ``_SUCCESS`` and hidden files are ignored) or one file; local path, ``file://``
          or any fsspec URI.
        - ``output_dir`` (required): local directory for the artifacts (created).
        - ``format``: ``"csv"``, ``"parquet"`` or null to detect from the extensions.
        - ``schema_uri``: TFDV schema text proto. Missing file: a schema is inferred from this
          version and stored there (``schema_created``); null: inferred in memory, not stored.
        - ``previous_statistics_uri`` / ``serving_statistics_uri``: a ``statistics.pb`` of an
          earlier run, for drift / skew comparators.
        - ``drift`` / ``skew``: ``{"categorical_linf": 0.1, "numeric_jsd": 0.03,
          "features": {name: threshold}}`` (defaults calibrated on the demo generator, see
          ``schema.py``).
        - ``label``: the label column (default ``"label"``); recorded, validated like the rest.
        - ``engine``: ``"in_memory"`` (default; pyarrow chunks + TFDV in-memory generators) or
          ``"beam"`` (CSV only; ``beam_pipeline_args`` such as ``["--runner=FlinkRunner", ...]``).
        - ``chunk_rows``: rows per chunk for ``in_memory`` (default 200,000).
    :return: ``{"data_uri", "format", "label", "engine", "example_count", "feature_count",
        "schema_uri", "schema_created", "anomalies": [{"feature", "kind", "short_description",
        "description", "severity"}], "anomaly_count", "drift", "skew", "artifacts": {"statistics",
        "anomalies_text", "anomalies_json", "schema", "report_html", "plots"}, "mlflow":
        {"metrics"}}``.
    """
    import tensorflow_data_validation as tfdv

    settings = _validate_spec(spec)
    previous, serving = _baselines(settings)
    staged = StagedOutput(settings["output_dir"])
    try:
        stats, fmt = _statistics(settings, staged)
        schema, create = _schema(settings, stats)
        used = schema_lib.schema_for_validation(
            schema, stats, previous, serving, settings["drift"], settings["skew"]
        )
        anomalies = tfdv.validate_statistics(
            stats, used, previous_statistics=previous, serving_statistics=serving
        )
        entries = schema_lib.anomaly_list(anomalies)
        drift, skew = schema_lib.drift_skew_scores(anomalies)
        result: dict[str, Any] = {
            "data_uri": settings["data_uri"],
            "format": fmt,
            "label": settings["label"],
            "engine": settings["engine"],
            "example_count": int(stats.datasets[0].num_examples),
            "feature_count": len(stats.datasets[0].features),
            "schema_uri": settings.get("schema_uri"),
            "schema_created": create,
            "anomalies": entries,
            "anomaly_count": len(entries),
            "drift": drift,
            "skew": skew,
        }
        result["artifacts"] = _write_artifacts(staged, stats, used, anomalies, result, previous)
        if create:
            _store_schema(schema, settings["schema_uri"], settings["data_uri"])
        staged.commit(owned=ARTIFACT_NAMES)
    except BaseException:
        staged.discard()
        raise
    result["mlflow"] = {"metrics": _metrics(result)}
    log.info(
        "Validated %s: %d rows, %d anomalies, report %s",
        settings["data_uri"],
        result["example_count"],
        result["anomaly_count"],
        result["artifacts"]["report_html"],
    )
    return result


def _store_schema(schema: Any, uri: str, data_uri: str) -> None:
    from google.protobuf import text_format

    write_atomic(uri, text_format.MessageToString(schema).encode("utf-8"))
    log.warning(
        "No schema at %s: inferred one from %s and stored it; later runs validate against it", uri, data_uri
    )


def infer_schema(spec: dict[str, Any]) -> dict[str, Any]:
    """
    Infer a TFDV schema from a dataset version and write it as a text proto (atomically).

    :param spec: ``data_uri`` (required), ``schema_uri`` (required: where to write), ``format``
        (``csv`` / ``parquet`` / null to detect), ``overwrite`` (default false: an existing file is an
        error), ``chunk_rows`` (rows per chunk, default 200,000).
    :return: ``{"schema_uri", "feature_count", "example_count", "features": {name: type}}``.
    """
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    _check_keys("infer_schema", spec, INFER_KEYS, ("data_uri", "schema_uri"))
    _check_common("infer_schema", spec)
    uri = spec["schema_uri"]
    if exists(uri) and not spec.get("overwrite", False):
        raise ValueError(f"infer_schema: {uri!r} already exists; set 'overwrite': true to replace it.")
    settings = {**spec, "chunk_rows": spec.get("chunk_rows", DEFAULT_CHUNK_ROWS), "engine": "in_memory"}
    stats, _ = _statistics(settings)
    schema = schema_lib.infer_schema_from_stats(stats)
    write_atomic(uri, text_format.MessageToString(schema).encode("utf-8"))
    log.info("Wrote the schema of %s (%d features) to %s", spec["data_uri"], len(schema.feature), uri)
    return {
        "schema_uri": uri,
        "feature_count": len(schema.feature),
        "example_count": int(stats.datasets[0].num_examples),
        "features": {f.name: schema_pb2.FeatureType.Name(f.type) for f in schema.feature},
    }
