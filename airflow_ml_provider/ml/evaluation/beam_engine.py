"""
TFMA's own Beam pipeline, model-agnostic: the predictions are columns of the data.

Both models are declared to TFMA as ``MATERIALIZED_PREDICTION`` models, so TFMA reads each one's
predictions from its ``prediction_key`` column, computes every metric of the ``EvalConfig`` per
slice, the candidate-minus-baseline diffs, and validates the thresholds, exactly as TFX's
Evaluator does. Any Beam runner works (``beam_pipeline_args``), for data beyond one machine.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.ml.evaluation.results import (
    BASELINE,
    CANDIDATE,
    EvalOutput,
    Failure,
    slice_name,
)

if TYPE_CHECKING:
    import pandas as pd
    from tensorflow_model_analysis.proto.config_pb2 import EvalConfig

log = logging.getLogger(__name__)

BATCH_ROWS = 10_000
DIRECTIONS = {1: "lower is better", 2: "higher is better"}  # tfma.MetricDirection


def metric_label(key: Any) -> str:
    """
    A TFMA ``MetricKey`` as a flat name: ``auc``; ``auc/output:o``; ``precision/top_k:3``.

    Suffixes appear only when set: the output name, the sub key (class id, k, top k) and the
    aggregation type of multi-class metrics.

    :param key: a ``MetricKey`` proto, or TFMA's Python ``MetricKey``.
    """
    if hasattr(key, "to_proto"):
        key = key.to_proto()
    name = str(key.name)
    if key.output_name:
        name += f"/output:{key.output_name}"
    if key.HasField("sub_key"):
        sub = key.sub_key
        for field in ("class_id", "k", "top_k"):
            if sub.HasField(field):
                name += f"/{field}:{getattr(sub, field).value}"
    if "aggregation_type" in key.DESCRIPTOR.fields_by_name and key.HasField("aggregation_type"):
        name += "/" + key.aggregation_type.WhichOneof("type")
    return name


def _model(key: Any) -> str:
    return BASELINE if key.model_name == BASELINE else CANDIDATE


def _value(metric_value: Any) -> float | None:
    if metric_value.WhichOneof("type") == "double_value":
        return float(metric_value.double_value.value)
    return None


def run_pipeline(frame: pd.DataFrame, config: EvalConfig, output_path: str, pipeline_args: list[str]) -> None:
    """Run TFMA's ExtractEvaluateAndWriteResults over ``frame`` into ``output_path``."""
    import apache_beam as beam
    import pyarrow as pa
    import tensorflow_model_analysis as tfma
    from apache_beam.options.pipeline_options import PipelineOptions
    from tensorflow_model_analysis.api import types
    from tfx_bsl.arrow import table_util

    has_baseline = any(spec.is_baseline for spec in config.model_specs)
    models = [
        types.EvalSharedModel(
            model_name=spec.name,
            model_type=tfma.constants.MATERIALIZED_PREDICTION,
            is_baseline=spec.is_baseline,
            rubber_stamp=not has_baseline,
        )
        for spec in config.model_specs
    ]
    shared: Any = models if len(models) > 1 else models[0]
    batches = [
        table_util.CanonicalizeRecordBatch(
            pa.RecordBatch.from_pandas(frame.iloc[i : i + BATCH_ROWS], preserve_index=False)
        )
        for i in range(0, len(frame), BATCH_ROWS)
    ]
    with beam.Pipeline(options=PipelineOptions(pipeline_args)) as pipeline:
        _ = (
            pipeline
            | "Batches" >> beam.Create(batches, reshuffle=False)
            | "Evaluate"
            >> tfma.ExtractEvaluateAndWriteResults(
                eval_config=config, eval_shared_model=shared, output_path=output_path
            )
        )


def read_metrics(
    output_path: str,
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, list[list[Any]]]]:
    """Metrics per slice and model (diffs left out: they are candidate minus baseline)."""
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.slicer import slicer_lib

    metrics: dict[str, dict[str, dict[str, float]]] = {}
    keys: dict[str, list[list[Any]]] = {}
    for per_slice in tfma.load_metrics(output_path):
        key = slicer_lib.deserialize_slice_key(per_slice.slice_key)
        label = slice_name(key)
        keys[label] = [[column, _plain(value)] for column, value in key]
        models = metrics.setdefault(label, {})
        for entry in per_slice.metric_keys_and_values:
            if entry.key.is_diff:
                continue
            value = _value(entry.value)
            if value is not None:
                models.setdefault(_model(entry.key), {})[metric_label(entry.key)] = value
    return metrics, keys


def _plain(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def describe_bound(threshold: Any) -> tuple[str, str]:
    """``(kind, readable bound)`` of a TFMA ``MetricThreshold`` that failed."""
    if threshold.HasField("change_threshold"):
        change = threshold.change_threshold
        direction = DIRECTIONS.get(change.direction, "unknown direction")
        parts = []
        if change.HasField("absolute"):
            op = ">=" if change.direction == 2 else "<="
            parts.append(f"candidate - baseline {op} {change.absolute.value:g}")
        if change.HasField("relative"):
            op = ">=" if change.direction == 2 else "<="
            parts.append(f"(candidate - baseline) / baseline {op} {change.relative.value:g}")
        return "change", f"{' and '.join(parts)} ({direction})"
    value = threshold.value_threshold
    parts = []
    if value.HasField("lower_bound"):
        parts.append(f">= {value.lower_bound.value:g}")
    if value.HasField("upper_bound"):
        parts.append(f"<= {value.upper_bound.value:g}")
    return "value", " and ".join(parts) or "(no bound)"


def read_failures(
    output_path: str, metrics: dict[str, dict[str, dict[str, float]]]
) -> tuple[bool, list[Failure]]:
    """TFMA's validation result (written by the pipeline) as :class:`Failure` records."""
    import tensorflow_model_analysis as tfma

    return read_failures_from(tfma.load_validation_result(output_path), metrics)


def read_failures_from(
    result: Any, metrics: dict[str, dict[str, dict[str, float]]]
) -> tuple[bool, list[Failure]]:
    """A TFMA ``ValidationResult`` as :class:`Failure` records, with candidate and baseline values."""
    from google.protobuf import json_format
    from tensorflow_model_analysis.slicer import slicer_lib

    failures: list[Failure] = []
    for per_slice in result.metric_validations_per_slice:
        label = slice_name(slicer_lib.deserialize_slice_key(per_slice.slice_key))
        models = metrics.get(label, {})
        for failure in per_slice.failures:
            name = metric_label(failure.metric_key)
            kind, bound = describe_bound(failure.metric_threshold)
            failures.append(
                Failure(
                    slice=label,
                    metric=name,
                    kind=kind,
                    value=models.get(CANDIDATE, {}).get(name),
                    bound=bound,
                    baseline_value=models.get(BASELINE, {}).get(name) if kind == "change" else None,
                    threshold=json_format.MessageToDict(failure.metric_threshold),
                    message=str(failure.message),
                )
            )
    for spec in result.missing_slices:
        failures.append(
            Failure(
                slice=json_format.MessageToJson(spec, indent=None) or "{}",
                metric="(slice)",
                kind="missing_slice",
                value=None,
                bound="a threshold names this slice, but the data has no such slice",
            )
        )
    return bool(result.validation_ok), failures


def evaluate_beam(
    frame: pd.DataFrame, config: EvalConfig, *, workdir: str, pipeline_args: list[str] | None = None
) -> EvalOutput:
    """
    Evaluate with TFMA's Beam pipeline; ``config`` comes from :func:`prepare_eval_config`.

    :param frame: label, prediction and slicing columns.
    :param config: the prepared EvalConfig.
    :param workdir: scratch directory for TFMA's output files.
    :param pipeline_args: Beam pipeline options (runner, parallelism ...).
    """
    import os

    output_path = os.path.join(workdir, "tfma")
    run_pipeline(frame, config, output_path, list(pipeline_args or []))
    metrics, keys = read_metrics(output_path)
    ok, failures = read_failures(output_path, metrics)
    overall = metrics.get("Overall", {}).get(CANDIDATE, {})
    count = overall.get("example_count")
    return EvalOutput(
        metrics=metrics,
        slice_keys=keys,
        failures=failures,
        validation_ok=ok,
        engine="beam",
        example_count=int(count) if count is not None and math.isfinite(count) else len(frame),
        has_baseline=any(spec.is_baseline for spec in config.model_specs),
    )
