"""Schema handling for the validation steps: load, infer, set drift/skew comparators, read anomalies."""

from __future__ import annotations

import copy
import logging
from typing import Any

from airflow_ml_provider.ml.validation.io import read_bytes

log = logging.getLogger(__name__)

# Defaults calibrated on the demo generator (3,000-100,000 rows, 20 histogram buckets): a resample
# of the same distribution scores L-inf <= 0.025 and JSD <= 0.023 (balance; income <= 0.017);
# drift=0.5 gives JSD income 0.037-0.044, balance 0.027-0.033, tenure 0.021-0.026, age 0.014-0.020;
# drift=1.0 gives >= 0.05 on age, income, balance and tenure_months. TFDV's JSD works on equal-width
# histograms, so small location shifts of long-tailed features score low: 0.03 flags drift=0.5 on
# income (and usually balance) and drift=1.0 on all four without alarming on a resample.
DEFAULT_CATEGORICAL_LINF = 0.1
DEFAULT_NUMERIC_JSD = 0.03
# Inferred schemas: a feature seen with presence p < 1 must keep at least p - PRESENCE_MARGIN,
# so a large null spike is an anomaly (TFDV only pins presence when p == 1).
PRESENCE_MARGIN = 0.1


def load_schema(uri: str) -> Any:
    """
    Read a TFDV schema text proto; a file that does not parse is a ValueError naming it.

    :param uri: path or fsspec URI of the ``schema.pbtxt``.
    """
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    raw = (
        _run_artifact_bytes(uri, "schema_uri") if uri.startswith("runs:/") else read_bytes(uri, "schema_uri")
    )
    try:
        return text_format.Parse(raw.decode("utf-8"), schema_pb2.Schema())
    except (text_format.ParseError, UnicodeDecodeError) as err:
        raise ValueError(
            f"validate_data: schema file {uri!r} is not a valid TFDV schema text proto: {err}. "
            "Fix it, or delete it to have the next run infer a new one."
        ) from err


def _run_artifact_bytes(uri: str, key: str) -> bytes:
    """
    The bytes of ``runs:/<run_id>/<path>`` from MLflow (``MLFLOW_TRACKING_URI``): a step in a pod
    reads an earlier run's statistics there, as the operator does on the worker.
    """
    import tempfile

    import mlflow

    try:
        with tempfile.TemporaryDirectory(prefix="ml-statistics-") as workdir:
            path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=workdir)
            with open(path, "rb") as handle:
                return handle.read()
    except Exception as err:
        raise ValueError(
            f"validate_data: spec key {key!r}: cannot read {uri!r} from MLflow ({err}); check the run id and "
            "path, and that MLFLOW_TRACKING_URI reaches the tracking server."
        ) from err


def load_statistics(uri: str, key: str) -> Any:
    """
    Read a binary ``DatasetFeatureStatisticsList`` (as written by validate_data).

    :param uri: path or fsspec URI.
    :param key: the spec key, named in errors.
    """
    from google.protobuf.message import DecodeError
    from tensorflow_metadata.proto.v0 import statistics_pb2

    stats = statistics_pb2.DatasetFeatureStatisticsList()
    try:
        stats.ParseFromString(
            _run_artifact_bytes(uri, key) if uri.startswith("runs:/") else read_bytes(uri, key)
        )
    except DecodeError as err:
        raise ValueError(
            f"validate_data: spec key {key!r}: {uri!r} is not a binary DatasetFeatureStatisticsList "
            f"({err}); give the statistics.pb written by an earlier validate_data run."
        ) from err
    if not stats.datasets:
        raise ValueError(f"validate_data: spec key {key!r}: {uri!r} holds no dataset statistics.")
    return stats


def _presence_fractions(stats: Any) -> dict[str, float]:
    dataset = stats.datasets[0]
    total = dataset.num_examples
    fractions: dict[str, float] = {}
    for feature in dataset.features:
        common = feature.num_stats.common_stats if feature.HasField("num_stats") else None
        if common is None and feature.HasField("string_stats"):
            common = feature.string_stats.common_stats
        if common is not None and total:
            fractions[".".join(feature.path.step)] = common.num_non_missing / total
    return fractions


def infer_schema_from_stats(stats: Any) -> Any:
    """
    Infer a schema with TFDV, then pin ``presence.min_fraction`` of partly missing features.

    :param stats: the ``DatasetFeatureStatisticsList`` to infer from.
    """
    import tensorflow_data_validation as tfdv

    schema = tfdv.infer_schema(stats)
    fractions = _presence_fractions(stats)
    for feature in schema.feature:
        seen = fractions.get(feature.name)
        if seen is not None and seen < 1.0 and feature.presence.min_fraction < seen - PRESENCE_MARGIN:
            feature.presence.min_fraction = round(max(seen - PRESENCE_MARGIN, 0.0), 4)
    return schema


def _feature_kinds(stats: Any) -> dict[str, str]:
    """Feature name -> ``categorical`` or ``numeric`` from statistics (:param stats:)."""
    kinds: dict[str, str] = {}
    for feature in stats.datasets[0].features:
        name = ".".join(feature.path.step) or feature.name
        kinds[name] = "categorical" if feature.HasField("string_stats") else "numeric"
    return kinds


def add_comparators(
    schema: Any, current: Any, baseline: Any, thresholds: dict[str, Any], kind: str
) -> list[str]:
    """
    Set drift or skew comparators on every feature present in the schema, ``current`` and ``baseline``.

    The comparator follows the statistics both sides carry: features with categorical statistics
    (STRING/BYTES, categorical ints) get an L-infinity comparator, features with numeric statistics a
    Jensen-Shannon divergence comparator. That includes INT features with a ``bool_domain`` (TFDV
    infers one for a 0/1 label): they only have numeric statistics, on which an L-infinity
    comparator would always score 0, so label shift would go unseen. A feature whose kind differs
    between the two sides (a type change) gets no comparator; validation reports the type change.

    :param schema: the schema copy used for validation (modified).
    :param current: statistics of this version.
    :param baseline: previous (drift) or serving (skew) statistics.
    :param thresholds: ``{"categorical_linf", "numeric_jsd", "features": {name: threshold}}``.
    :param kind: ``"drift"`` or ``"skew"``.
    :return: the features that got a comparator.
    """
    now, before = _feature_kinds(current), _feature_kinds(baseline)
    overrides = thresholds.get("features") or {}
    compared = []
    for feature in schema.feature:
        if feature.name not in now or now[feature.name] != before.get(feature.name):
            continue  # nothing to compare a new, dropped or retyped feature with
        comparator = getattr(feature, f"{kind}_comparator")
        if now[feature.name] == "categorical":
            default = thresholds.get("categorical_linf", DEFAULT_CATEGORICAL_LINF)
            comparator.infinity_norm.threshold = float(overrides.get(feature.name, default))
        else:
            default = thresholds.get("numeric_jsd", DEFAULT_NUMERIC_JSD)
            comparator.jensen_shannon_divergence.threshold = float(overrides.get(feature.name, default))
        compared.append(feature.name)
    return compared


def schema_for_validation(
    schema: Any,
    stats: Any,
    previous: Any | None,
    serving: Any | None,
    drift: dict[str, Any],
    skew: dict[str, Any],
) -> Any:
    """
    Return a copy of ``schema`` with drift/skew comparators for the baselines given.

    :param schema: the stored or inferred schema (not modified).
    :param stats: statistics of this version.
    :param previous: statistics of the previous version, or None.
    :param serving: serving statistics, or None.
    :param drift: drift thresholds.
    :param skew: skew thresholds.
    """
    used = copy.deepcopy(schema)
    if previous is not None:
        add_comparators(used, stats, previous, drift, "drift")
    if serving is not None:
        add_comparators(used, stats, serving, skew, "skew")
    return used


def serving_environment(schema: Any, stats: Any, label: str) -> str | None:
    """
    The environment to check serving data in, setting one up in ``schema`` when it has none.

    Serving data usually comes without the label. A schema without environments (an inferred one)
    gets TFDV's ``TRAINING`` and ``SERVING`` environments with the label left out of ``SERVING``,
    when this data lacks it; a curated schema's environments are used as they are.

    :param schema: the schema copy used for validation (modified).
    :param stats: statistics of the serving data.
    :param label: the label column.
    :return: ``"SERVING"``, or None when the schema declares no such environment.
    """
    if not schema.default_environment:
        present = set(_feature_kinds(stats))
        feature = next((f for f in schema.feature if f.name == label), None)
        if feature is None or label in present:
            return None
        schema.default_environment.extend(["TRAINING", "SERVING"])
        feature.not_in_environment.append("SERVING")
    return "SERVING" if "SERVING" in schema.default_environment else None


def _severity(info: Any) -> str:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    return "WARNING" if info.severity == anomalies_pb2.AnomalyInfo.WARNING else "ERROR"


def anomaly_list(anomalies: Any) -> list[dict[str, str]]:
    """
    Flatten an Anomalies proto into one entry per reason.

    :param anomalies: the ``Anomalies`` proto from ``tfdv.validate_statistics``.
    """
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    entries: list[tuple[str, Any]] = sorted(anomalies.anomaly_info.items())
    if anomalies.HasField("dataset_anomaly_info"):
        entries.append(("", anomalies.dataset_anomaly_info))
    out = []
    for feature, info in entries:
        for reason in info.reason:
            out.append(
                {
                    "feature": feature,
                    "kind": anomalies_pb2.AnomalyInfo.Type.Name(reason.type),
                    "short_description": reason.short_description,
                    "description": reason.description,
                    "severity": _severity(info),
                }
            )
    return out


def drift_skew_scores(anomalies: Any) -> tuple[dict[str, float], dict[str, float]]:
    """
    Read drift and skew scores per feature from ``drift_skew_info`` of an Anomalies proto.

    :param anomalies: the ``Anomalies`` proto.
    :return: ``(drift, skew)`` dicts of feature -> the largest measured value.
    """
    drift: dict[str, float] = {}
    skew: dict[str, float] = {}
    for info in anomalies.drift_skew_info:
        name = ".".join(info.path.step)
        for measurement in info.drift_measurements:
            drift[name] = max(drift.get(name, 0.0), float(measurement.value))
        for measurement in info.skew_measurements:
            skew[name] = max(skew.get(name, 0.0), float(measurement.value))
    return drift, skew
