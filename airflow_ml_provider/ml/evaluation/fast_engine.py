"""
The in-memory fast path: TFMA's metrics and decisions without the Beam pipeline.

TFMA turns an ``EvalConfig`` into *computations*: combiners that aggregate examples (counts, a
calibration histogram of 10,000 prediction buckets, confusion matrices at fixed thresholds,
weighted sums, regression errors) and derived computations that turn the aggregates into metrics
(AUC, precision, calibration ...). Beam spends its time feeding examples one by one to the
combiners. Here each supported combiner's accumulator is built with numpy over a whole slice at
once (:mod:`fast_metrics`), and everything after that is TFMA's own code: the derived
computations, the candidate-minus-baseline diffs, the threshold validator and the validation
combiner. Slices are grouped with ``pandas.factorize`` and follow TFMA's slicer, down to its
quirks (see :func:`iter_slices`). Anything else takes the Beam engine
(:func:`unsupported_reasons` says why).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.ml.evaluation.beam_engine import (
    asks_both_weightings,
    metric_label,
    read_failures_from,
)
from airflow_ml_provider.ml.evaluation.config import with_defaults
from airflow_ml_provider.ml.evaluation.fast_metrics import (
    ACCUMULATE,
    CLASSIFICATION,
    FrameColumns,
    SliceColumns,
)
from airflow_ml_provider.ml.evaluation.results import BASELINE, CANDIDATE, EvalOutput, slice_name

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from tensorflow_model_analysis.proto.config_pb2 import EvalConfig

SliceKey = tuple[tuple[str, Any], ...]


def computations(config: EvalConfig) -> Any:
    """
    TFMA's computations of ``config``, de-duplicated and split as its evaluator does.

    :param config: a config from ``prepare_eval_config`` (defaults are applied here).
    """
    from tensorflow_model_analysis.evaluators.metrics_plots_and_validations_evaluator import (
        _filter_and_separate_computations,
    )
    from tensorflow_model_analysis.metrics import metric_specs

    full = with_defaults(config)
    return _filter_and_separate_computations(
        metric_specs.to_computations(full.metrics_specs, eval_config=full)
    )


# -- what the fast path takes -------------------------------------------------------------------


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
            reasons.append("a metrics spec binarizes or aggregates classes (multi-class)")
        if metrics_spec.cross_slice_thresholds:
            reasons.append("cross-slice thresholds are set")
    return reasons


def _computation_reasons(computation: Any) -> list[str]:
    from tensorflow_model_analysis.metrics import metric_util

    combiner = computation.combiner
    name = type(combiner).__name__
    names = ", ".join(sorted({_short(metric_label(k)) for k in computation.keys}))
    if name not in ACCUMULATE:
        return [f"{names}: computed by TFMA's {name}, which only the Beam engine runs"]
    preprocessors = [type(p).__name__ for p in (computation.preprocessors or [])]
    if any(p != "StandardMetricInputsPreprocessor" for p in preprocessors):
        return [f"{names}: preprocessors {preprocessors}"]
    if any(k.sub_key or k.output_name or getattr(k, "aggregation_type", None) for k in computation.keys):
        return [f"{names}: sub keys (class_id, k, top_k), outputs or aggregation"]
    for attribute in ("_aggregation_type", "_class_weights", "_example_id_key"):
        if getattr(combiner, attribute, None):
            return [f"{names}: {attribute.strip('_')} is set"]
    extract = getattr(combiner, "_extract_label_prediction_and_weight", None)
    if extract is not None and extract is not metric_util.to_label_prediction_example_weight:
        return [f"{names}: a custom label/prediction extraction"]
    return []


def _short(label: str) -> str:
    """TFMA's private names carry their arguments (``_flip_counts:baseline_model_name=...``)."""
    return label.split(":", 1)[0][:60] if label.startswith("_") else label


def _numeric_reasons(frame: pd.DataFrame, config: EvalConfig, classification: bool) -> list[str]:
    import numpy as np
    import pandas as pd

    reasons = []
    for spec in config.model_specs:
        roles = (("label", spec.label_key), ("prediction", spec.prediction_key))
        for role, column in (*roles, ("example weight", spec.example_weight_key)):
            if not column or column not in frame.columns:
                continue
            series = frame[column]
            if not pd.api.types.is_numeric_dtype(series.dtype):
                reasons.append(f"{role} column {column!r} is not numeric ({series.dtype})")
                continue
            values = series.to_numpy(dtype="float64", na_value=np.nan)
            if not np.isfinite(values).all():
                reasons.append(f"{role} column {column!r} has NaN, missing or infinite values")
            elif role == "label" and classification and not np.isin(values, (0.0, 1.0)).all():
                reasons.append(f"label column {column!r} has values other than 0 and 1")
    return reasons


def _slicing_reasons(frame: pd.DataFrame, config: EvalConfig) -> list[str]:
    import pandas as pd

    reasons = []
    columns = {c for s in config.slicing_specs for c in [*s.feature_keys, *s.feature_values]}
    for column in sorted(columns & set(frame.columns)):
        series = frame[column]
        if isinstance(series.dtype, pd.CategoricalDtype):
            series = series.astype(series.dtype.categories.dtype)
        if pd.api.types.is_numeric_dtype(series.dtype):
            continue  # booleans too: frame_for_tfma makes them 0/1, as TFMA does
        kind = pd.api.types.infer_dtype(series, skipna=True)
        if kind not in ("string", "bytes", "empty"):
            reasons.append(f"slicing column {column!r} holds {kind} values, not numbers or strings")
    return reasons


def unsupported_reasons(eval_config: EvalConfig, frame: pd.DataFrame | None = None) -> list[str]:
    """
    Why the fast path cannot evaluate ``eval_config`` (on ``frame``); empty when it can.

    The fast path takes single-output binary classification and regression: every metric whose
    per-example aggregation is one of TFMA's example count, calibration histogram, binary
    confusion matrix, weighted label/prediction sums, mean squared or absolute error combiners
    (AUC, AUCPrecisionRecall, BinaryAccuracy, Precision, Recall, F1Score, FPR, Specificity, ...,
    Calibration, MeanLabel, MeanPrediction, MeanSquaredError, MeanAbsoluteError, ExampleCount,
    WeightedExampleCount), with 0/1 labels for the classification ones, finite numbers, and
    feature_keys / feature_values
    slicing on numeric or string columns.

    :param eval_config: a config from ``prepare_eval_config``.
    :param frame: the evaluation data (``None``: check the config only).
    """
    config = eval_config
    reasons = _config_reasons(config)
    try:
        comps = computations(config)
    except Exception as err:  # TFMA refuses the config: the Beam engine reports it in full
        return [*reasons, f"TFMA cannot build the metrics: {err}"]
    if comps.cross_slice_computations or comps.ci_derived_computations:
        reasons.append("cross-slice or confidence-interval computations")
    for computation in comps.non_derived_computations:
        reasons.extend(_computation_reasons(computation))
    if frame is not None:
        classification = any(
            type(c.combiner).__name__ in CLASSIFICATION for c in comps.non_derived_computations
        )
        reasons.extend(_numeric_reasons(frame, config, classification))
        reasons.extend(_slicing_reasons(frame, config))
    return sorted(set(reasons))


# -- slices ---------------------------------------------------------------------------------------


class _SliceColumn:
    """One slicing column as codes (-1: missing) and TFMA values (bytes -> str, numpy -> Python)."""

    def __init__(self, series: pd.Series) -> None:
        import pandas as pd

        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        self.codes = codes.astype("int64", copy=False)
        self.values = [_python(v) for v in uniques.tolist()]

    def matching(self, wanted: Any) -> np.ndarray:
        """Rows whose value TFMA's ``feature_values`` check accepts (see :func:`iter_slices`)."""
        import numpy as np

        accepted = [
            isinstance(wanted, str) == isinstance(value, str) and value == wanted for value in self.values
        ]
        table = np.array([*accepted, False], dtype=bool)  # code -1 reads the final False
        return table[self.codes]


def _python(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value.item() if hasattr(value, "item") else value


def _reported(key: SliceKey) -> SliceKey:
    """The key as TFMA writes it: float slice values go through the proto's 32-bit float."""
    import numpy as np

    return tuple((c, float(np.float32(v)) if isinstance(v, float) else v) for c, v in key)


def _groups(columns: list[_SliceColumn], mask: np.ndarray | None) -> Iterator[tuple[list[Any], np.ndarray]]:
    """(values, row positions) of every combination of the columns' values present in the rows."""
    import numpy as np
    import pandas as pd

    size = len(columns[0].codes)
    valid = np.ones(size, dtype=bool) if mask is None else mask.copy()
    combined = np.zeros(size, dtype=np.int64)
    for column in columns:
        valid &= column.codes >= 0
        combined, _ = pd.factorize(combined * (len(column.values) + 1) + column.codes)
        combined = combined.astype(np.int64, copy=False)
    positions = np.flatnonzero(valid)
    if not len(positions):
        return
    order = np.argsort(combined[positions], kind="stable")
    ordered = positions[order]
    codes = combined[ordered]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    for rows in np.split(ordered, starts[1:]):
        first = rows[0]
        yield [column.values[column.codes[first]] for column in columns], rows


def iter_slices(frame: pd.DataFrame, config: EvalConfig) -> Iterator[tuple[SliceKey, np.ndarray | None]]:
    """
    ``(TFMA slice key, row positions or None for all)`` of every slice, once each.

    As TFMA's slicer: rows with a missing value have no slice of that column; ``feature_values``
    strings are typed first (``"1"`` -> 1, ``"0.5"`` -> 0.5), so a number never matches a string
    column (``"1"`` does not select ``tier == "1"``) while ``"1"`` matches 1.0 in a float column;
    the key then carries the typed value; equal keys from several specs are one slice (the first
    spec's key). Booleans arrive as 0/1 (``frame_for_tfma``).

    :param frame: the evaluation data.
    :param config: the prepared config.
    """
    from tensorflow_model_analysis.slicer import slicer_lib

    cache: dict[str, _SliceColumn] = {}

    def column(name: str) -> _SliceColumn:
        if name not in cache:
            cache[name] = _SliceColumn(frame[name])
        return cache[name]

    seen: set[SliceKey] = set()
    for spec in config.slicing_specs:
        single = slicer_lib.SingleSliceSpec(spec=spec)
        value_matches = list(single._value_matches)  # sorted (column, typed value)
        mask = None
        for name, wanted in value_matches:
            hits = column(name).matching(wanted)
            mask = hits if mask is None else mask & hits
        names = sorted(single._columns)
        if not names:
            key = tuple(value_matches)
            if key not in seen and (mask is None or mask.any()):
                seen.add(key)
                yield key, None if mask is None else mask.nonzero()[0]
            continue
        for values, rows in _groups([column(n) for n in names], mask):
            key = tuple(sorted(value_matches + list(zip(names, values, strict=True))))
            if key not in seen:
                seen.add(key)
                yield key, rows


# -- metrics --------------------------------------------------------------------------------------


def _is_private(key: Any) -> bool:
    return str(key.name).startswith("_") and not str(key.name).startswith("__")


def _is_number(value: Any) -> bool:
    import numbers

    return isinstance(value, numbers.Number) and not isinstance(value, bool | complex)


def slice_metrics(comps: Any, data: SliceColumns, baseline_name: str | None) -> dict[Any, Any]:
    """
    Every public numeric metric of one slice, keyed by TFMA MetricKey, with TFMA's diffs.

    :param comps: from :func:`computations`.
    :param data: the slice's columns.
    :param baseline_name: the baseline model's name, or None.
    """
    from tensorflow_model_analysis.metrics import metric_types

    results: dict[Any, Any] = {}
    for computation in comps.non_derived_computations:
        results.update(ACCUMULATE[type(computation.combiner).__name__](computation.combiner, data))
    for computation in comps.derived_computations:
        results.update(computation.result(results))
    metrics = {
        k: v
        for k, v in results.items()
        if type(k) is metric_types.MetricKey and not _is_private(k) and _is_number(v)
    }
    if baseline_name:
        for key, value in list(metrics.items()):
            base = key.make_baseline_key(baseline_name)
            if key.model_name != baseline_name and not key.is_diff and base in metrics:
                metrics[key.make_diff_key()] = value - metrics[base]
    return metrics


def evaluate_fast(frame: pd.DataFrame, config: EvalConfig) -> EvalOutput:
    """
    Evaluate ``config`` (from ``prepare_eval_config``) on ``frame`` in memory.

    :param frame: label, prediction, weight and slicing columns (see ``frame_for_tfma``).
    :param config: the prepared EvalConfig; check :func:`unsupported_reasons` first.
    """
    import numpy as np
    from tensorflow_model_analysis.evaluators import metrics_validator
    from tensorflow_model_analysis.writers.metrics_plots_and_validations_writer import CombineValidations

    full = with_defaults(config)
    comps = computations(config)
    baseline = next((s.name for s in full.model_specs if s.is_baseline), None)
    combiner = CombineValidations(full, rubber_stamp=baseline is None)
    suffix = asks_both_weightings(config)
    columns = FrameColumns(frame, full)
    validation = None
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    keys: dict[str, list[list[Any]]] = {}
    with np.errstate(divide="ignore", invalid="ignore"):  # TFMA's own 0/0 -> NaN, as in Beam
        for key, rows in iter_slices(frame, full):
            values = slice_metrics(comps, SliceColumns(columns, rows), baseline)
            result = metrics_validator.validate_metrics((key, values), full)
            validation = combiner.add_input(validation, result)
            label = slice_name(_reported(key))
            keys[label] = [[column, value] for column, value in _reported(key)]
            models = metrics.setdefault(label, {})
            for metric_key, value in values.items():
                if not metric_key.is_diff:
                    model = BASELINE if baseline and metric_key.model_name == baseline else CANDIDATE
                    models.setdefault(model, {})[metric_label(metric_key, unweighted_suffix=suffix)] = float(
                        value
                    )
    ok, failures = read_failures_from(combiner.extract_output(validation), metrics, config)
    return EvalOutput(
        metrics=metrics,
        slice_keys=keys,
        failures=failures,
        validation_ok=ok,
        engine="fast",
        example_count=len(frame),
        has_baseline=baseline is not None,
    )
