"""The ``validate_data`` and ``infer_schema`` steps (JSON spec in, JSON result out)."""

from __future__ import annotations

import logging
import os
from typing import Any

from airflow_ml_provider.ml.specs.validation import DATA_ROLE_SERVING, InferSchemaSpec, ValidateDataSpec
from airflow_ml_provider.ml.validation import schema as schema_lib
from airflow_ml_provider.ml.validation.io import (
    StagedOutput,
    exists,
    find_data_files,
    no_rows_message,
    write_atomic,
)
from airflow_ml_provider.ml.validation.statistics import compute_statistics

log = logging.getLogger(__name__)

ARTIFACT_NAMES = (
    "statistics.pb",
    "anomalies.pbtxt",
    "anomalies.json",
    "schema.pbtxt",
    "report.html",
    "plots",
)


def _statistics(
    data_uri: str,
    fmt: str | None,
    chunk_rows: int,
    beam_args: list[str] | None = None,
    staged: StagedOutput | None = None,
) -> tuple[Any, str]:
    """
    Compute statistics of ``data_uri``; a version without rows is an error.

    :param data_uri: the dataset version.
    :param fmt: its format, or None to tell by extension.
    :param chunk_rows: rows per chunk of the in-memory engine.
    :param beam_args: the Beam pipeline's options when the engine is Beam; None: in memory.
    :param staged: the staging directory (the beam engine writes its output there).
    """
    files = find_data_files(data_uri, fmt)
    if beam_args is not None and staged is not None:
        from airflow_ml_provider.ml.validation.beam import compute_statistics_beam

        stats = compute_statistics_beam(files, beam_args, str(staged.tmp / "beam_statistics.pb"))
        os.remove(staged.tmp / "beam_statistics.pb")
    else:
        stats = compute_statistics(files, chunk_rows)
    if not stats.datasets or stats.datasets[0].num_examples == 0:
        raise ValueError(no_rows_message(files))
    return stats, files.format


def _schema(settings: ValidateDataSpec, stats: Any) -> tuple[Any, bool]:
    """Load the schema at ``schema_uri`` or infer one; return it and whether it must be stored."""
    uri = settings.schema_uri
    if uri and (uri.startswith("runs:/") or exists(uri)):
        return schema_lib.load_schema(uri), False
    if uri and settings.data_role == DATA_ROLE_SERVING:
        # A schema stored from serving data (no label, serving's quirks) would then judge training data.
        raise FileNotFoundError(
            f"validate_data: schema_uri {uri!r} does not exist, and a schema is not inferred from serving "
            "data (data_role 'serving'). Validate a training version first (it stores the schema there), "
            "or leave schema_uri empty to check against a schema inferred in memory."
        )
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


def _baselines(settings: ValidateDataSpec) -> tuple[Any | None, Any | None]:
    """
    The previous statistics (drift) and the other side of skew: serving statistics for training
    data, training statistics for serving data.

    TFDV measures skew from the statistics it validates (the training side) to its
    ``serving_statistics``; for serving data the training statistics take that argument, so that
    the schema check (and drift) stays on this data. Both skew measures, L-infinity distance and
    Jensen-Shannon divergence, are symmetric, so the scores are those of TFDV's own orientation
    (``tests/unit/ml/test_validation.py`` checks it).
    """
    previous = settings.previous_statistics_uri
    key = "training_statistics_uri" if settings.data_role == DATA_ROLE_SERVING else "serving_statistics_uri"
    other = getattr(settings, key)
    return (
        schema_lib.load_statistics(previous, "previous_statistics_uri") if previous else None,
        schema_lib.load_statistics(other, key) if other else None,
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

    :param spec: a :class:`~airflow_ml_provider.ml.specs.ValidateDataSpec` as a JSON dict.
    :return: ``{"data_uri", "format", "data_role", "label", "engine", "example_count", "feature_count",
        "schema_uri", "schema_created", "anomalies": [{"feature", "kind", "short_description",
        "description", "severity"}], "anomaly_count", "drift", "skew", "artifacts": {"statistics",
        "anomalies_text", "anomalies_json", "schema", "report_html", "plots"}, "mlflow":
        {"metrics"}}``.
    """
    settings = ValidateDataSpec.parse(spec)
    import tensorflow_data_validation as tfdv

    previous, serving = _baselines(settings)
    staged = StagedOutput(settings.output_dir)
    try:
        beam_args = list(settings.beam_pipeline_args) if settings.engine == "beam" else None
        stats, fmt = _statistics(settings.data_uri, settings.format, settings.chunk_rows, beam_args, staged)
        schema, create = _schema(settings, stats)
        used = schema_lib.schema_for_validation(
            schema, stats, previous, serving, dict(settings.drift), dict(settings.skew)
        )
        serving_data = settings.data_role == DATA_ROLE_SERVING
        anomalies = tfdv.validate_statistics(
            stats,
            used,
            environment=schema_lib.serving_environment(used, stats, settings.label) if serving_data else None,
            previous_statistics=previous,
            serving_statistics=serving,
        )
        entries = schema_lib.anomaly_list(anomalies)
        drift, skew = schema_lib.drift_skew_scores(anomalies)
        result: dict[str, Any] = {
            "data_uri": settings.data_uri,
            "format": fmt,
            "data_role": settings.data_role,
            "label": settings.label,
            "engine": settings.engine,
            "example_count": int(stats.datasets[0].num_examples),
            "feature_count": len(stats.datasets[0].features),
            "schema_uri": settings.schema_uri,
            "schema_created": create,
            "anomalies": entries,
            "anomaly_count": len(entries),
            "drift": drift,
            "skew": skew,
        }
        result["artifacts"] = _write_artifacts(staged, stats, used, anomalies, result, previous)
        if create and settings.schema_uri:
            _store_schema(schema, settings.schema_uri, settings.data_uri)
        staged.commit(owned=ARTIFACT_NAMES)
    except BaseException:
        staged.discard()
        raise
    result["mlflow"] = {"metrics": _metrics(result)}
    log.info(
        "Validated %s: %d rows, %d anomalies, report %s",
        settings.data_uri,
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

    :param spec: an :class:`~airflow_ml_provider.ml.specs.InferSchemaSpec` as a JSON dict.
    :return: ``{"schema_uri", "feature_count", "example_count", "features": {name: type}}``.
    """
    settings = InferSchemaSpec.parse(spec)
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    uri = settings.schema_uri
    if exists(uri) and not settings.overwrite:
        raise ValueError(f"infer_schema: {uri!r} already exists; set 'overwrite': true to replace it.")
    stats, _ = _statistics(settings.data_uri, settings.format, settings.chunk_rows)
    schema = schema_lib.infer_schema_from_stats(stats)
    text = text_format.MessageToString(schema).encode("utf-8")
    write_atomic(uri, text)
    log.info("Wrote the schema of %s (%d features) to %s", settings.data_uri, len(schema.feature), uri)
    if settings.output_dir:  # a copy for the task's MLflow run (the schema may be on object storage)
        os.makedirs(settings.output_dir, exist_ok=True)
        with open(os.path.join(settings.output_dir, uri.rstrip("/").rsplit("/", 1)[-1]), "wb") as handle:
            handle.write(text)
    return {
        "schema_uri": uri,
        "feature_count": len(schema.feature),
        "example_count": int(stats.datasets[0].num_examples),
        "features": {f.name: schema_pb2.FeatureType.Name(f.type) for f in schema.feature},
    }
