"""
The MLflow pyfunc model of a trained SavedModel (an MLflow "model from code" file).

MLflow copies this file into the logged model, so loading the model needs TensorFlow, pandas and
MLflow, not this provider. ``predict`` takes a pandas DataFrame (or a dict of columns) holding the
serving signature's inputs by name (an input the export renamed in the signature, ``mean_radius``,
by the model's own input name, ``mean radius``), casts each column to the input's dtype and shape,
and returns a 1-D numpy array for a model with one output of width 1 (a binary classifier's
probability, a regression value), else a DataFrame with one column per output (``name`` or
``name_<i>``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

SIGNATURE_KEY = "serving_default"
# Written by the export when a column name is not a valid signature input name (``mean radius``):
# signature input name -> column name. Kept in step with ml/training/signature.py.
INPUT_NAMES_FILE = "assets.extra/input_names.json"


def _input_columns(saved_model_dir: str, inputs: Any) -> dict[str, str]:
    """Signature input name -> the column of the input frame that feeds it."""
    path = Path(saved_model_dir) / INPUT_NAMES_FILE
    renamed = json.loads(path.read_text())["inputs"] if path.is_file() else {}
    return {name: renamed.get(name, name) for name in inputs}


def _column(values: Any, dtype: Any, shape: Any) -> Any:
    import tensorflow as tf

    array = np.asarray(values)
    if dtype == tf.string:
        array = np.array(["" if v is None else str(v) for v in array.reshape(-1)], dtype=object)
    else:
        array = array.astype(dtype.as_numpy_dtype, copy=False)
    rank = len(shape) if shape.rank is not None else 1
    if rank == 2 and array.ndim == 1:
        array = array.reshape(-1, 1)
    return tf.constant(array, dtype=dtype)


class SavedModelPyfunc(PythonModel):
    """Serve the ``serving_default`` signature of the ``saved_model`` artifact."""

    def load_context(self, context: Any) -> None:
        import tensorflow as tf

        self._model = tf.saved_model.load(context.artifacts["saved_model"])
        self._fn = self._model.signatures[SIGNATURE_KEY]
        _, self._inputs = self._fn.structured_input_signature
        self._columns = _input_columns(context.artifacts["saved_model"], self._inputs)

    # No type hints: MLflow would read them as a schema and convert the DataFrame before predict.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        source = self._columns
        missing = [column for column in source.values() if column not in frame.columns]
        if missing:
            raise ValueError(
                f"The model's input is missing column(s) {', '.join(sorted(missing))}; it needs "
                f"{', '.join(sorted(source.values()))}."
            )
        feed = {
            name: _column(frame[source[name]].to_numpy(), spec.dtype, spec.shape)
            for name, spec in self._inputs.items()
        }
        outputs = {key: value.numpy() for key, value in self._fn(**feed).items()}
        if len(outputs) == 1:
            (only,) = outputs.values()
            if only.ndim == 1 or (only.ndim == 2 and only.shape[1] == 1):
                return only.reshape(-1)
        columns: dict[str, Any] = {}
        for key, value in sorted(outputs.items()):
            if value.ndim == 2 and value.shape[1] > 1:
                for i in range(value.shape[1]):
                    columns[f"{key}_{i}"] = value[:, i]
            else:
                columns[key] = value.reshape(len(frame), -1)[:, 0]
        return pd.DataFrame(columns, index=frame.index)


mlflow.models.set_model(SavedModelPyfunc())
