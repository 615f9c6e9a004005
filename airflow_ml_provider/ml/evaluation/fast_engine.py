"""
The in-memory fast path: TFMA's metrics and decisions without the Beam pipeline.

TFMA turns an ``EvalConfig`` into *computations*: combiners that aggregate examples (counts,
a calibration histogram of 10,000 prediction buckets, confusion matrices at fixed thresholds,
weighted sums) and derived computations that turn the aggregates into metrics (AUC, precision,
calibration ...). Beam spends its time feeding examples one by one to the combiners. Here each
supported combiner's accumulator is built with numpy over a whole slice at once, in TFMA's own
accumulator types, and everything after that is TFMA's own code: the combiners'
``extract_output``, the derived computations, the diffs against the baseline, the threshold
validator and the validation combiner. Configs with anything else take the Beam engine.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.ml.evaluation.beam_engine import metric_label, read_failures_from
from airflow_ml_provider.ml.evaluation.results import BASELINE, CANDIDATE, EvalOutput, slice_name

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from tensorflow_model_analysis.proto.config_pb2 import EvalConfig

SUPPORTED_COMBINERS = (
    "_ExampleCountCombiner",
    "_CalibrationHistogramCombiner",
    "_BinaryConfusionMatrixCombiner",
    "_WeightedLabelsPredictionsExamplesCombiner",
    "_MeanSquaredErrorCombiner",
    "_MeanAbsoluteErrorCombiner",
)
CLASSIFICATION_COMBINERS = ("_CalibrationHistogramCombiner", "_BinaryConfusionMatrixCombiner")


def with_defaults(config: EvalConfig) -> EvalConfig:
    """The config as TFMA's pipeline sees it (metrics specs name the models)."""
    from tensorflow_model_analysis.utils import config_util

    has_baseline = any(spec.is_baseline for spec in config.model_specs)
    return config_util.update_eval_config_with_defaults(
        config, has_baseline=has_baseline, rubber_stamp=not has_baseline
    )


def computations(config: EvalConfig) -> Any:
    """TFMA's computations of ``config``, de-duplicated and split as its evaluator does."""
    from tensorflow_model_analysis.evaluators.metrics_plots_and_validations_evaluator import (
        _filter_and_separate_computations,
    )
    from tensorflow_model_analysis.metrics import metric_specs

    return _filter_and_separate_computations(
        metric_specs.to_computations(config.metrics_specs, eval_config=config)
    )


def _config_reasons(config: EvalConfig) -> list[str]:
    reasons = []
    options = config.options
    if options.compute_confidence_intervals.value:
        reasons.append("confidence intervals are requested")
    if options.min_slice_size.value > 1:
        reasons.append("options.min_slice_size is set")
    if config.cross_slicing_specs:
        reasons.append("cross_slicing_specs are used")
    for spec in config.model_specs:
        if spec.label_keys or spec.prediction_keys or spec.example_weight_keys:
            reasons.append(f"model spec {spec.name!r} has several outputs")
    for metrics_spec in config.metrics_specs:
        if metrics_spec.output_names or metrics_spec.query_key:
            reasons.append("a metrics spec names outputs or a query key")
        if metrics_spec.HasField("binarize") or metrics_spec.HasField("aggregate"):
            reasons.append("a metrics spec binarizes or aggregates classes")
    return reasons


def _computation_reasons(computation: Any) -> list[str]:
    combiner = getattr(computation, "combiner", None)
    if combiner is None:
        return []  # derived: TFMA's own code runs on the aggregates
    name = type(combiner).__name__
    names = ", ".join(sorted({metric_label(k) for k in computation.keys}))
    if name not in SUPPORTED_COMBINERS:
        return [f"{names}: computed by {name}, which only the Beam engine runs"]
    preprocessors = [type(p).__name__ for p in (computation.preprocessors or [])]
    if any(p != "StandardMetricInputsPreprocessor" for p in preprocessors):
        return [f"{names}: preprocessors {preprocessors}"]
    for attribute in ("_aggregation_type", "_class_weights"):
        if getattr(combiner, attribute, None):
            return [f"{names}: {attribute.strip('_')} is set"]
    if any(k.sub_key or k.output_name for k in computation.keys):
        return [f"{names}: sub keys or output names"]
    return []


def unsupported_reasons(config: EvalConfig, frame: pd.DataFrame | None = None) -> list[str]:
    """Why the fast path cannot evaluate ``config`` (on ``frame``); empty when it can."""
    config = with_defaults(config)
    reasons = _config_reasons(config)
    try:
        comps = computations(config)
    except Exception as err:  # TFMA refuses the config: the Beam engine reports it in full
        return [*reasons, f"TFMA cannot build the metrics: {err}"]
    if comps.cross_slice_computations or comps.ci_derived_computations:
        reasons.append("cross-slice or confidence-interval computations")
    for computation in comps.non_derived_computations:
        reasons.extend(_computation_reasons(computation))
    classification = any(
        type(c.combiner).__name__ in CLASSIFICATION_COMBINERS for c in comps.non_derived_computations
    )
    if frame is not None and classification:
        for spec in config.model_specs:
            labels = frame[spec.label_key] if spec.label_key in frame.columns else None
            if labels is not None and not labels.isin([0, 1]).all():
                reasons.append(f"label {spec.label_key!r} has values other than 0 and 1")
                break
    return sorted(set(reasons))


# -- slices -----------------------------------------------------------------------------------


def _slices(frame: pd.DataFrame, config: EvalConfig) -> Iterator[tuple[tuple[Any, ...], np.ndarray]]:
    """(TFMA slice key, row positions) for every slice the slicing specs produce, once each."""
    import numpy as np
    from tensorflow_model_analysis.slicer import slicer_lib

    seen: set[tuple[Any, ...]] = set()
    everything = np.arange(len(frame))
    for spec in config.slicing_specs:
        single = slicer_lib.SingleSliceSpec(spec=spec)
        mask = np.ones(len(frame), dtype=bool)
        for column, value in single._features:  # (column, typed value) of feature_values
            values = frame[column]
            mask &= (values == value).to_numpy() | (values.astype(str) == str(value)).to_numpy()
        value_matches = list(single._value_matches)
        columns = sorted(single._columns)
        if not columns:
            key = tuple(sorted(value_matches))
            if key not in seen and mask.any():
                seen.add(key)
                yield key, everything[mask]
            continue
        groups = frame.loc[mask, columns].groupby(columns, sort=True, dropna=True).indices
        positions = everything[mask]
        for group, rows in groups.items():
            group_values = group if isinstance(group, tuple) else (group,)
            pairs = [(c, _plain(v)) for c, v in zip(columns, group_values, strict=True)]
            key = tuple(sorted(value_matches + pairs))
            if key not in seen:
                seen.add(key)
                yield key, positions[rows]


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value.item() if hasattr(value, "item") else value


# -- accumulators -------------------------------------------------------------------------------


class _Columns:
    """Labels, predictions and weights of one slice, per model name, as float64 arrays."""

    def __init__(self, frame: pd.DataFrame, rows: np.ndarray, config: EvalConfig) -> None:
        self._frame, self._rows, self._config = frame, rows, config
        self._cache: dict[tuple[str, str], np.ndarray] = {}

    def _spec(self, model_name: str) -> Any:
        specs = self._config.model_specs
        if len(specs) == 1:
            return specs[0]
        return next(s for s in specs if s.name == model_name)

    def _get(self, column: str) -> np.ndarray:
        key = ("col", column)
        if key not in self._cache:
            self._cache[key] = self._frame[column].to_numpy(dtype="float64")[self._rows]
        return self._cache[key]

    def label(self, model_name: str) -> np.ndarray:
        return self._get(self._spec(model_name).label_key)

    def prediction(self, model_name: str) -> np.ndarray:
        return self._get(self._spec(model_name).prediction_key)

    def weight(self, model_name: str, weighted: bool) -> np.ndarray:
        import numpy as np

        column = self._spec(model_name).example_weight_key
        if weighted and column:
            return self._get(column)
        return np.ones(len(self._rows))


def _example_count(combiner: Any, data: _Columns) -> dict[Any, Any]:
    model = combiner._model_name
    weights = data.weight(model, combiner._example_weighted)
    total = float(weights.sum()) if combiner._example_weighted else float(len(weights))
    return {key: total for key in combiner._keys}


def _calibration_histogram(combiner: Any, data: _Columns) -> dict[Any, Any]:
    import numpy as np
    from tensorflow_model_analysis.metrics.calibration_histogram import Bucket

    key = combiner._key
    label, prediction = data.label(key.model_name), data.prediction(key.model_name)
    weight = data.weight(key.model_name, combiner._example_weighted)
    basis = prediction if combiner._prediction_based_bucketing else label
    buckets = combiner._num_buckets
    raw = ((basis - combiner._left) / combiner._range * buckets) + 1
    index = np.where(raw < 0, 0, np.where(raw >= buckets + 1, buckets + 1, np.trunc(raw))).astype(np.int64)
    size = buckets + 2
    present = np.bincount(index, minlength=size)
    labels = np.bincount(index, weights=label * weight, minlength=size)
    predictions = np.bincount(index, weights=prediction * weight, minlength=size)
    examples = np.bincount(index, weights=weight, minlength=size)
    histogram = [
        Bucket(int(i), float(labels[i]), float(predictions[i]), float(examples[i]))
        for i in np.flatnonzero(present)
    ]
    return {key: histogram}


def _confusion_matrices(combiner: Any, data: _Columns) -> dict[Any, Any]:
    from tensorflow_model_analysis.contrib.aggregates.binary_confusion_matrices import Matrix, _ThresholdEntry

    key = combiner._key
    bcm = combiner._binary_confusion_matrices
    label, prediction = data.label(key.model_name), data.prediction(key.model_name)
    weight = data.weight(key.model_name, combiner._example_weighted)
    accumulator = {}
    for threshold in bcm._thresholds:
        positive = label == 1.0 if bcm._enable_fractional_labels else label > threshold
        predicted = prediction > threshold
        matrix = Matrix(
            tp=float(weight[positive & predicted].sum()),
            tn=float(weight[~positive & ~predicted].sum()),
            fp=float(weight[~positive & predicted].sum()),
            fn=float(weight[positive & ~predicted].sum()),
        )
        accumulator[threshold] = _ThresholdEntry(matrix, [], [], [], [])
    return dict(combiner.extract_output(accumulator))


def _weighted_sums(combiner: Any, data: _Columns) -> dict[Any, Any]:
    key = combiner._key
    weight = data.weight(key.model_name, combiner._example_weighted)
    accumulator = combiner.create_accumulator()
    accumulator.total_weighted_examples = float(weight.sum())
    accumulator.total_weighted_labels = float((data.label(key.model_name) * weight).sum())
    accumulator.total_weighted_predictions = float((data.prediction(key.model_name) * weight).sum())
    return dict(combiner.extract_output(accumulator))


def _regression_error(combiner: Any, data: _Columns) -> dict[Any, Any]:
    import numpy as np

    key = combiner._metric_key
    label, prediction = data.label(key.model_name), data.prediction(key.model_name)
    weight = data.weight(key.model_name, combiner._example_weighted)
    if type(combiner).__name__ == "_MeanSquaredErrorCombiner":
        error = (label - prediction) ** 2
    else:
        error = np.abs(label - prediction)
    keep = ~np.isnan(error)
    accumulator = combiner.create_accumulator()
    accumulator.total_regression_error = float((error[keep] * weight[keep]).sum())
    accumulator.total_example_weights = float(weight[keep].sum())
    return dict(combiner.extract_output(accumulator))


ACCUMULATE = {
    "_ExampleCountCombiner": _example_count,
    "_CalibrationHistogramCombiner": _calibration_histogram,
    "_BinaryConfusionMatrixCombiner": _confusion_matrices,
    "_WeightedLabelsPredictionsExamplesCombiner": _weighted_sums,
    "_MeanSquaredErrorCombiner": _regression_error,
    "_MeanAbsoluteErrorCombiner": _regression_error,
}


# -- one slice ---------------------------------------------------------------------------------


def slice_metrics(comps: Any, data: _Columns, baseline_name: str | None) -> dict[Any, Any]:
    """Every metric of one slice, keyed by TFMA MetricKey, with the diffs TFMA adds."""
    from tensorflow_model_analysis.metrics import metric_types

    results: dict[Any, Any] = {}
    for computation in comps.non_derived_computations:
        results.update(ACCUMULATE[type(computation.combiner).__name__](computation.combiner, data))
    for computation in comps.derived_computations:
        results.update(computation.result(results))
    metrics = {
        k: v
        for k, v in results.items()
        if isinstance(k, metric_types.MetricKey) and not k.name.startswith("_") and _is_number(v)
    }
    if baseline_name:
        for key, value in list(metrics.items()):
            base = key.make_baseline_key(baseline_name)
            if key.model_name != baseline_name and not key.is_diff and base in metrics:
                metrics[key.make_diff_key()] = value - metrics[base]
    return metrics


def _is_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value)) or math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def evaluate_fast(frame: pd.DataFrame, config: EvalConfig) -> EvalOutput:
    """
    Evaluate ``config`` (from :func:`prepare_eval_config`) on ``frame`` in memory.

    :param frame: label, prediction, weight and slicing columns.
    :param config: the prepared EvalConfig; see :func:`unsupported_reasons` first.
    """
    from tensorflow_model_analysis.evaluators import metrics_validator
    from tensorflow_model_analysis.writers.metrics_plots_and_validations_writer import CombineValidations

    config = with_defaults(config)
    comps = computations(config)
    baseline = next((s.name for s in config.model_specs if s.is_baseline), None)
    combiner = CombineValidations(config, rubber_stamp=baseline is None)
    validation = None
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    keys: dict[str, list[list[Any]]] = {}
    for key, rows in _slices(frame, config):
        values = slice_metrics(comps, _Columns(frame, rows, config), baseline)
        validation = combiner.add_input(validation, metrics_validator.validate_metrics((key, values), config))
        label = slice_name(key)
        keys[label] = [[column, value] for column, value in key]
        models = metrics.setdefault(label, {})
        for metric_key, value in values.items():
            if not metric_key.is_diff:
                model = BASELINE if metric_key.model_name == baseline and baseline else CANDIDATE
                models.setdefault(model, {})[metric_label(metric_key)] = float(value)
    ok, failures = read_failures_from(combiner.extract_output(validation), metrics)
    return EvalOutput(
        metrics=metrics,
        slice_keys=keys,
        failures=failures,
        validation_ok=ok,
        engine="fast",
        example_count=len(frame),
        has_baseline=baseline is not None,
    )
