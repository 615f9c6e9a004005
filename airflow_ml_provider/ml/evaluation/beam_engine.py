"""
TFMA's own Beam pipeline, model-agnostic: the predictions are columns of the data.

Both models are declared to TFMA as ``MATERIALIZED_PREDICTION`` models, so TFMA reads each one's
predictions from its ``prediction_key`` column, computes every metric of the ``EvalConfig`` per
slice, the candidate-minus-baseline diffs, and validates the thresholds, exactly as TFX's
Evaluator does. Any Beam runner works (``beam_pipeline_args``), for data beyond one machine.

Metric names (both engines): a TFMA ``MetricKey`` flattened as its ``name``, then, only when set,
``/output:<output_name>``, ``/class_id:<n>``, ``/k:<n>`` or ``/top_k:<n>`` (the sub key), and
``/<aggregation type>`` (``micro_average`` ...); when a metrics spec asks for both weighted and
unweighted values, the unweighted ones end in ``/unweighted``. Diffs are not listed (they are
candidate minus baseline); baseline values are, under model ``baseline``.
"""

from __future__ import annotations

import logging
import os
import warnings
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

# Rows per Arrow record batch fed to TFMA: 1k, 10k and 30k rows per batch ran equally fast (30k rows,
# within the noise); batches bound the memory of one bundle.
BATCH_ROWS = 10_000
DIRECTIONS = {1: "lower is better", 2: "higher is better"}  # tfma.MetricDirection
Metrics = dict[str, dict[str, dict[str, float]]]


def metric_label(key: Any, *, unweighted_suffix: bool = False) -> str:
    """
    A TFMA ``MetricKey`` as a flat name: ``auc``; ``auc/output:o``; ``precision/top_k:3``.

    :param key: a ``MetricKey`` proto, or TFMA's Python ``MetricKey``.
    :param unweighted_suffix: append ``/unweighted`` to keys computed without example weights
        (when the config asks for both weighted and unweighted values of the same metric).
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
    fields = key.DESCRIPTOR.fields_by_name  # a PlotKey has no aggregation_type
    if "aggregation_type" in fields and key.HasField("aggregation_type"):
        name += "/" + str(key.aggregation_type.WhichOneof("type"))
    if (
        unweighted_suffix
        and "example_weighted" in fields
        and key.HasField("example_weighted")
        and not key.example_weighted.value
    ):
        name += "/unweighted"
    return name


def asks_both_weightings(config: EvalConfig) -> bool:
    """True when a metrics spec asks for weighted and unweighted values (names need a suffix)."""
    return any(
        spec.HasField("example_weights") and spec.example_weights.weighted and spec.example_weights.unweighted
        for spec in config.metrics_specs
    )


def _model(key: Any) -> str:
    return BASELINE if key.model_name == BASELINE else CANDIDATE


def _value(metric_value: Any) -> float | None:
    kind = metric_value.WhichOneof("type")
    if kind == "double_value":
        return float(metric_value.double_value.value)
    if kind == "bounded_value":  # with confidence intervals
        return float(metric_value.bounded_value.value.value)
    return None


def frame_for_tfma(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """
    The columns an evaluation reads, in types TFMA's Arrow path accepts (both engines use this).

    Booleans become 0/1 integers (what TFMA makes of them anyway: slice ``flag=1``); categoricals
    become their values (TFMA cannot read Arrow dictionary arrays).

    :param frame: the evaluation data.
    :param columns: the columns to keep.
    """
    import pandas as pd

    out = frame[columns].copy()
    for column in columns:
        dtype = out[column].dtype
        if isinstance(dtype, pd.CategoricalDtype):
            out[column] = out[column].astype(dtype.categories.dtype)
            dtype = out[column].dtype
        if pd.api.types.is_bool_dtype(dtype):
            out[column] = out[column].astype("Int64" if out[column].hasnans else "int64")
    return out.reset_index(drop=True)


def run_pipeline(frame: pd.DataFrame, config: EvalConfig, output_path: str, pipeline_args: list[str]) -> None:
    """
    Run TFMA's ``ExtractEvaluateAndWriteResults`` over ``frame`` into ``output_path``.

    :param frame: the columns the config reads (see :func:`frame_for_tfma`).
    :param config: the prepared EvalConfig.
    :param output_path: TFMA's output directory.
    :param pipeline_args: Beam pipeline options.
    """
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
    with warnings.catch_warnings(), beam.Pipeline(options=PipelineOptions(pipeline_args)) as pipeline:
        # TFMA 0.47 warns per example (numpy scalar conversions, 0/0 in its own metrics).
        for category in (DeprecationWarning, RuntimeWarning):
            warnings.filterwarnings("ignore", category=category, module="tensorflow_model_analysis")
        _ = (
            pipeline
            | "Batches" >> beam.Create(batches, reshuffle=False)
            | "Evaluate"
            >> tfma.ExtractEvaluateAndWriteResults(
                eval_config=config, eval_shared_model=shared, output_path=output_path
            )
        )


def read_metrics(output_path: str, config: EvalConfig) -> tuple[Metrics, dict[str, list[list[Any]]]]:
    """
    Metrics per slice and model from TFMA's output (diffs left out: candidate minus baseline).

    :param output_path: TFMA's output directory.
    :param config: the config of the run (for metric names).
    """
    import tensorflow_model_analysis as tfma
    from tensorflow_model_analysis.slicer import slicer_lib

    suffix = asks_both_weightings(config)
    metrics: Metrics = {}
    keys: dict[str, list[list[Any]]] = {}
    for per_slice in tfma.load_metrics(output_path):
        key = slicer_lib.deserialize_slice_key(per_slice.slice_key)
        label = slice_name(key)
        keys[label] = [[column, value] for column, value in key]
        models = metrics.setdefault(label, {})
        for entry in per_slice.metric_keys_and_values:
            if entry.key.is_diff:
                continue
            value = _value(entry.value)
            if value is not None:
                name = metric_label(entry.key, unweighted_suffix=suffix)
                models.setdefault(_model(entry.key), {})[name] = value
    return metrics, keys


def describe_bound(threshold: Any) -> tuple[str, str]:
    """
    ``(kind, readable bound)`` of a TFMA ``MetricThreshold`` that failed.

    :param threshold: the ``MetricThreshold`` proto of a failure.
    """
    if threshold.HasField("change_threshold"):
        return "change", _describe_change(threshold.change_threshold)
    return "value", _describe_value(threshold.value_threshold)


def _describe_change(change: Any) -> str:
    direction = DIRECTIONS.get(change.direction, "no direction")
    op = ">=" if change.direction == 2 else "<="
    parts = []
    if change.HasField("absolute"):
        parts.append(f"candidate - baseline {op} {change.absolute.value:g}")
    if change.HasField("relative"):
        parts.append(f"(candidate - baseline) / baseline {op} {change.relative.value:g}")
    return f"{' and '.join(parts) or 'no bound'} ({direction})"


def _describe_value(value: Any) -> str:
    parts = []
    if value.HasField("lower_bound"):
        parts.append(f">= {value.lower_bound.value:g}")
    if value.HasField("upper_bound"):
        parts.append(f"<= {value.upper_bound.value:g}")
    return " and ".join(parts) or "(no bound)"


def threshold_table(config: EvalConfig) -> list[dict[str, str]]:
    """
    Every threshold the config sets, one row each: ``{"metric", "slice", "kind", "bound"}``.

    ``slice`` is ``"every slice"`` for a threshold of the whole metric, else the slicing spec as a
    slice name with wildcards (:func:`spec_label`). Read by people (report, Airflow UI), not by TFMA.

    :param config: the prepared ``EvalConfig`` of the run.
    """
    from tensorflow_model_analysis.metrics import metric_specs

    baselines = {spec.name for spec in config.model_specs if spec.is_baseline}
    suffix = asks_both_weightings(config)
    rows: list[dict[str, str]] = []
    thresholds = metric_specs.metric_thresholds_from_metrics_specs(config.metrics_specs, eval_config=config)
    for key, entries in thresholds.items():
        if key.model_name in baselines:
            continue
        for slice_spec, threshold in entries:
            change = key.is_diff
            row = {
                "metric": metric_label(key, unweighted_suffix=suffix),
                "slice": "every slice" if slice_spec is None else _slice_spec_label(slice_spec),
                "kind": "change" if change else "value",
                "bound": _describe_change(threshold) if change else _describe_value(threshold),
            }
            if row not in rows:
                rows.append(row)
    return sorted(rows, key=lambda r: (r["metric"], r["slice"], r["kind"]))


def _slice_spec_label(spec: Any) -> str:
    if spec.DESCRIPTOR.name == "CrossSlicingSpec":
        slices = ", ".join(spec_label(s) for s in spec.slicing_specs)
        return f"{spec_label(spec.baseline_spec)} vs {slices}"
    return spec_label(spec)


def spec_label(spec: Any) -> str:
    """
    A slicing spec as a slice name with wildcards: ``region=north``, ``region=*, tier=2``.

    :param spec: a ``SlicingSpec`` proto.
    """
    parts = [(key, "*") for key in spec.feature_keys] + list(spec.feature_values.items())
    return slice_name(tuple(sorted(parts)))


def read_failures(output_path: str, metrics: Metrics, config: EvalConfig) -> tuple[bool, list[Failure]]:
    """
    TFMA's validation result (written by the pipeline) as :class:`Failure` records.

    :param output_path: TFMA's output directory.
    :param metrics: from :func:`read_metrics`, for candidate and baseline values.
    :param config: the config of the run (for metric names).
    """
    import tensorflow_model_analysis as tfma

    return read_failures_from(tfma.load_validation_result(output_path), metrics, config)


def read_failures_from(result: Any, metrics: Metrics, config: EvalConfig) -> tuple[bool, list[Failure]]:
    """
    A TFMA ``ValidationResult`` as :class:`Failure` records, with candidate and baseline values.

    :param result: the ``ValidationResult`` proto.
    :param metrics: metrics per slice and model, for the values.
    :param config: the config of the run (for metric names).
    """
    from google.protobuf import json_format
    from tensorflow_model_analysis.slicer import slicer_lib

    suffix = asks_both_weightings(config)
    failures: list[Failure] = []
    for per_slice in result.metric_validations_per_slice:
        label = slice_name(slicer_lib.deserialize_slice_key(per_slice.slice_key))
        models = metrics.get(label, {})
        for failure in per_slice.failures:
            name = metric_label(failure.metric_key, unweighted_suffix=suffix)
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
                    message=str(failure.message).strip(),
                )
            )
    for spec in result.missing_slices:
        failures.append(
            Failure(
                slice=spec_label(spec),
                metric="(slice)",
                kind="missing_slice",
                value=None,
                bound="a threshold names this slice, but the data has no such slice",
                threshold=json_format.MessageToDict(spec),
            )
        )
    if result.missing_thresholds:
        failures.append(
            Failure(
                slice="(all)",
                metric="(thresholds)",
                kind="missing_thresholds",
                value=None,
                bound="a baseline was given but the eval_config sets no threshold; TFMA blesses none",
            )
        )
    elif not result.validation_ok and not failures:
        failures.append(
            Failure(
                slice="(all)",
                metric="(slices)",
                kind="no_slices",
                value=None,
                bound="TFMA validated no slice: no row matched the slicing_specs",
            )
        )
    return bool(result.validation_ok), failures


def evaluate_beam(
    frame: pd.DataFrame, config: EvalConfig, *, workdir: str, pipeline_args: list[str] | None = None
) -> EvalOutput:
    """
    Evaluate with TFMA's Beam pipeline; ``config`` comes from :func:`prepare_eval_config`.

    :param frame: label, prediction, weight and slicing columns (see :func:`frame_for_tfma`).
    :param config: the prepared EvalConfig.
    :param workdir: scratch directory for TFMA's output files (kept, under ``tfma/``).
    :param pipeline_args: Beam pipeline options (runner, parallelism ...).
    """
    output_path = os.path.join(workdir, "tfma")
    log.info("Running TFMA's Beam pipeline on %d rows into %s", len(frame), output_path)
    run_pipeline(frame, config, output_path, list(pipeline_args or []))
    metrics, keys = read_metrics(output_path, config)
    ok, failures = read_failures(output_path, metrics, config)
    return EvalOutput(
        metrics=metrics,
        slice_keys=keys,
        failures=failures,
        validation_ok=ok,
        engine="beam",
        example_count=len(frame),
        has_baseline=any(spec.is_baseline for spec in config.model_specs),
    )
