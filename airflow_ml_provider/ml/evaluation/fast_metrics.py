"""
TFMA's per-example combiners, replaced by numpy over a whole slice at once.

Each function builds, for one slice, exactly the accumulator that TFMA's combiner would hold after
seeing the slice's examples one by one, and hands it to the combiner's own ``extract_output``
where that does more than return it. Everything downstream (AUC from the calibration histogram,
precision from the confusion matrices, ...) is TFMA's own code, run by the fast engine. Only the
combiner states listed in :data:`ACCUMULATE` are reproduced; ``fast_engine.unsupported_reasons``
sends everything else to the Beam engine.

Labels of classification combiners are 0 or 1 here (checked before): TFMA's "fractional labels"
split of an example into ``(0, p, w * (1 - l))`` and ``(1, p, w * l)`` then keeps it whole, and
drops examples whose weight is exactly 0, which only decides whether an empty histogram bucket is
listed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from tensorflow_model_analysis.proto.config_pb2 import EvalConfig


class FrameColumns:
    """Labels, predictions and weights of every model as float64 arrays, read once per frame."""

    def __init__(self, frame: pd.DataFrame, config: EvalConfig) -> None:
        self._frame = frame
        self._specs = {spec.name: spec for spec in config.model_specs}
        self._single = config.model_specs[0] if len(config.model_specs) == 1 else None
        self._cache: dict[Any, np.ndarray] = {}
        self.rows = len(frame)

    def spec(self, model_name: str) -> Any:
        return self._single if self._single is not None else self._specs[model_name]

    def column(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = self._frame[name].to_numpy(dtype="float64")
        return self._cache[name]

    def cached(self, key: Any, compute: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]


class SliceColumns:
    """The rows of one slice (``rows=None``: all rows), with per-slice caching."""

    def __init__(self, frame: FrameColumns, rows: np.ndarray | None) -> None:
        self.frame = frame
        self.rows = rows
        self.size = frame.rows if rows is None else len(rows)
        self._cache: dict[Any, np.ndarray] = {}

    def _take(self, key: Any, whole: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self._cache:
            values = self.frame.cached(key, whole)
            self._cache[key] = values if self.rows is None else values[self.rows]
        return self._cache[key]

    def label(self, model_name: str) -> np.ndarray:
        name = self.frame.spec(model_name).label_key
        return self._take(name, lambda: self.frame.column(name))

    def prediction(self, model_name: str) -> np.ndarray:
        name = self.frame.spec(model_name).prediction_key
        return self._take(name, lambda: self.frame.column(name))

    def weight(self, model_name: str, weighted: bool) -> np.ndarray:
        import numpy as np

        name = self.frame.spec(model_name).example_weight_key
        if weighted and name:
            return self._take(name, lambda: self.frame.column(name))
        return self._take("__ones__", lambda: np.ones(self.frame.rows))

    def derived(self, key: Any, whole: Callable[[], np.ndarray]) -> np.ndarray:
        """A frame-level array computed once (bucket ids, products), restricted to the slice."""
        return self._take(key, whole)


def example_count(combiner: Any, data: SliceColumns) -> dict[Any, Any]:
    """``_ExampleCountCombiner``: the sum of the weights (1 per example when unweighted)."""
    if combiner._example_weighted:
        total = float(data.weight(combiner._model_name, True).sum())
    else:
        total = float(data.size)
    return {key: total for key in combiner._keys}


def _bucket_ids(values: np.ndarray, left: float, width: float, buckets: int) -> np.ndarray:
    import numpy as np

    # TFMA: int((v - left) / width * buckets + 1), clipped to [0, buckets + 1]; int() truncates.
    raw = ((values - left) / width * buckets) + 1
    return np.where(raw < 0, 0, np.where(raw >= buckets + 1, buckets + 1, np.trunc(raw))).astype(np.int64)


def calibration_histogram(combiner: Any, data: SliceColumns) -> dict[Any, Any]:
    """``_CalibrationHistogramCombiner``: weighted labels, predictions and examples per bucket."""
    import numpy as np
    from tensorflow_model_analysis.metrics.calibration_histogram import Bucket

    key = combiner._key
    model, weighted = key.model_name, combiner._example_weighted
    buckets, left, width = combiner._num_buckets, combiner._left, combiner._range
    spec = data.frame.spec(model)
    column = spec.prediction_key if combiner._prediction_based_bucketing else spec.label_key
    index = data.derived(
        ("buckets", column, buckets, left, width),
        lambda: _bucket_ids(data.frame.column(column), left, width, buckets),
    )
    weight = data.weight(model, weighted)
    label, prediction = data.label(model), data.prediction(model)
    size = buckets + 2
    listed = weight != 0 if combiner._fractional_labels else np.ones(len(index), dtype=bool)
    present = np.bincount(index, weights=listed, minlength=size)
    labels = np.bincount(index, weights=label * weight, minlength=size)
    predictions = np.bincount(index, weights=prediction * weight, minlength=size)
    examples = np.bincount(index, weights=weight, minlength=size)
    histogram = [
        Bucket(int(i), float(labels[i]), float(predictions[i]), float(examples[i]))
        for i in np.flatnonzero(present)
    ]
    return {key: histogram}


def confusion_matrices(combiner: Any, data: SliceColumns) -> dict[Any, Any]:
    """``_BinaryConfusionMatrixCombiner``: weighted tp/tn/fp/fn at each threshold (``pred > t``)."""
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


def weighted_sums(combiner: Any, data: SliceColumns) -> dict[Any, Any]:
    """``_WeightedLabelsPredictionsExamplesCombiner`` (mean label, mean prediction, calibration)."""
    key = combiner._key
    weight = data.weight(key.model_name, combiner._example_weighted)
    accumulator = combiner.create_accumulator()
    accumulator.total_weighted_examples = float(weight.sum())
    accumulator.total_weighted_labels = float((data.label(key.model_name) * weight).sum())
    accumulator.total_weighted_predictions = float((data.prediction(key.model_name) * weight).sum())
    return dict(combiner.extract_output(accumulator))


def regression_error(combiner: Any, data: SliceColumns) -> dict[Any, Any]:
    """``_MeanSquaredErrorCombiner`` / ``_MeanAbsoluteErrorCombiner``; NaN errors are skipped."""
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


ACCUMULATE: dict[str, Callable[[Any, SliceColumns], dict[Any, Any]]] = {
    "_ExampleCountCombiner": example_count,
    "_CalibrationHistogramCombiner": calibration_histogram,
    "_BinaryConfusionMatrixCombiner": confusion_matrices,
    "_WeightedLabelsPredictionsExamplesCombiner": weighted_sums,
    "_MeanSquaredErrorCombiner": regression_error,
    "_MeanAbsoluteErrorCombiner": regression_error,
}
# Combiners that need 0/1 labels here (TFMA splits other labels into fractional examples).
CLASSIFICATION = ("_CalibrationHistogramCombiner", "_BinaryConfusionMatrixCombiner")
