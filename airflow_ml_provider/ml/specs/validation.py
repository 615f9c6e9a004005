"""Specs of the data validation steps: ``validate_data`` and ``infer_schema`` (TFDV)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from airflow_ml_provider.ml.specs._base import Reader, StepSpec, is_number

ENGINES = ("in_memory", "beam")
# What ``data_uri`` holds: data a model is (to be) trained on, or what a model sees in serving.
DATA_ROLE_TRAINING = "training"
DATA_ROLE_SERVING = "serving"
DATA_ROLES = (DATA_ROLE_TRAINING, DATA_ROLE_SERVING)
THRESHOLD_KEYS = frozenset({"categorical_linf", "numeric_jsd", "features"})
DEFAULT_CHUNK_ROWS = 200_000
_PATH = "is required (a path or URI string)."


def _chunk_rows(read: Reader) -> int:
    rows = read.get("chunk_rows", DEFAULT_CHUNK_ROWS)
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
        raise read.error("chunk_rows", f"must be an int >= 1, got {rows!r}.")
    return rows


def _thresholds(read: Reader, key: str) -> dict[str, Any]:
    value = read.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - THRESHOLD_KEYS:
        raise read.error(key, f"must be a dict with keys from {sorted(THRESHOLD_KEYS)}, got {value!r}.")
    features = value.get("features") or {}
    if not isinstance(features, dict):
        raise read.error(key, f"'features' must be a dict of feature name -> threshold, got {features!r}.")
    numbers = [v for k, v in value.items() if k != "features"] + list(features.values())
    if not all(is_number(v) and v >= 0 for v in numbers):
        # no space after the key: the message has always read "spec key 'drift': thresholds ..."
        raise ValueError(f"{read.name(key)}: thresholds must be numbers >= 0, got {value!r}.")
    return dict(value)


@dataclass(frozen=True, kw_only=True)
class ValidateDataSpec(StepSpec):
    """
    The spec of ``validate_data``: statistics of a dataset version, checked against a schema and
    baselines. Unknown keys are an error.

    :param data_uri: the dataset version (required): a version directory (its visible ``*.csv`` /
        ``*.parquet`` files; ``_SUCCESS`` and hidden files are ignored) or one file; local path,
        ``file://`` or any fsspec URI.
    :param output_dir: local directory for the artifacts (required; created).
    :param format: ``"csv"``, ``"parquet"`` or null to detect from the extensions.
    :param schema_uri: TFDV schema text proto. Missing file: a schema is inferred from this version
        and stored there (``schema_created``); null: inferred in memory, not stored.
    :param previous_statistics_uri: a ``statistics.pb`` of an earlier run, for the drift comparators.
    :param serving_statistics_uri: a ``statistics.pb`` of serving data, for the skew comparators
        (``data_role`` training only).
    :param data_role: ``"training"`` (default) or ``"serving"``: serving data is checked against the
        schema in its ``SERVING`` environment (a schema without environments gets one in which the
        label may be missing), and a missing schema file is an error rather than inferred from it.
    :param training_statistics_uri: with ``data_role`` serving: the ``statistics.pb`` of the data the
        model was trained on, the training side of the skew comparators (this data is the serving side).
    :param drift: ``{"categorical_linf": 0.1, "numeric_jsd": 0.03, "features": {name: threshold}}``
        (defaults calibrated on the demo generator, see ``ml/validation/schema.py``).
    :param skew: the same for train/serving skew.
    :param label: the label column (default ``"label"``); recorded, validated like the rest.
    :param engine: ``"in_memory"`` (default; pyarrow chunks + TFDV in-memory generators) or
        ``"beam"`` (CSV only; see ``beam_pipeline_args``).
    :param beam_pipeline_args: Beam options for ``engine="beam"``, such as
        ``["--runner=FlinkRunner", ...]``.
    :param chunk_rows: rows per chunk of the ``in_memory`` engine (default 200,000).
    """

    step = "validate_data"
    strict = True

    data_uri: str
    output_dir: str
    format: str | None = None
    schema_uri: str | None = None
    previous_statistics_uri: str | None = None
    serving_statistics_uri: str | None = None
    data_role: str = DATA_ROLE_TRAINING
    training_statistics_uri: str | None = None
    drift: dict[str, Any] = field(default_factory=dict)
    skew: dict[str, Any] = field(default_factory=dict)
    label: str = "label"
    engine: str = "in_memory"
    beam_pipeline_args: tuple[str, ...] = ()
    chunk_rows: int = DEFAULT_CHUNK_ROWS

    @classmethod
    def _values(cls, spec: dict[str, Any]) -> dict[str, Any]:
        read = Reader(spec, cls.step)
        values: dict[str, Any] = {
            "data_uri": read.required_text("data_uri", _PATH),
            "output_dir": read.required_text("output_dir", _PATH),
            "format": read.data_format(),
            "chunk_rows": _chunk_rows(read),
            "engine": read.choice("engine", ENGINES, "in_memory"),
            "beam_pipeline_args": read.str_list("beam_pipeline_args") or (),
            "drift": _thresholds(read, "drift"),
            "skew": _thresholds(read, "skew"),
            "label": read.text("label", "label"),
        }
        for key in (
            "schema_uri",
            "previous_statistics_uri",
            "serving_statistics_uri",
            "training_statistics_uri",
        ):
            values[key] = read.text(key)
        values["data_role"] = read.choice("data_role", DATA_ROLES, DATA_ROLE_TRAINING)
        # Each role has one other side for skew: serving data for training data, and the reverse.
        serving = values["data_role"] == DATA_ROLE_SERVING
        wrong = "serving_statistics_uri" if serving else "training_statistics_uri"
        if values[wrong] is not None:
            raise read.error(
                wrong,
                f"does not go with data_role {values['data_role']!r}: give serving_statistics_uri to "
                "compare training data with serving data, or data_role 'serving' and "
                "training_statistics_uri to compare serving data with training data.",
            )
        return values


@dataclass(frozen=True, kw_only=True)
class InferSchemaSpec(StepSpec):
    """
    The spec of ``infer_schema``: a TFDV schema inferred from one dataset version, written as a
    text proto. Unknown keys are an error.

    :param data_uri: the dataset version (required), as for ``validate_data``.
    :param schema_uri: where to write the schema (required).
    :param format: ``"csv"``, ``"parquet"`` or null to detect from the extensions.
    :param overwrite: replace an existing schema file (default false: an existing file is an error).
    :param chunk_rows: rows per chunk (default 200,000).
    :param output_dir: where a copy of the schema goes too (named as ``schema_uri``'s file), for
        the task's MLflow run; null: nowhere.
    """

    step = "infer_schema"
    strict = True

    data_uri: str
    schema_uri: str
    format: str | None = None
    overwrite: bool = False
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    output_dir: str | None = None

    @classmethod
    def _values(cls, spec: dict[str, Any]) -> dict[str, Any]:
        read = Reader(spec, cls.step)
        return {
            "data_uri": read.required_text("data_uri", _PATH),
            "schema_uri": read.required_text("schema_uri", _PATH),
            "format": read.data_format(),
            "chunk_rows": _chunk_rows(read),
            "overwrite": read.boolean("overwrite"),
            "output_dir": read.text("output_dir"),
        }
