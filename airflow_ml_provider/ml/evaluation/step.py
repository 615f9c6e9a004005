"""
The ``evaluate_model`` step: a candidate model against a baseline, per slice, with TFMA semantics.

Spec: :class:`~airflow_ml_provider.ml.specs.EvaluateModelSpec`, as a JSON dict.

Predictions come from ``mlflow.pyfunc`` for both models, so any framework MLflow can serve works.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.ml.evaluation.results import BASELINE, CANDIDATE, OVERALL, EvalOutput
from airflow_ml_provider.ml.specs.evaluation import EvaluateModelSpec

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

CANDIDATE_COLUMN = "__prediction_candidate"
BASELINE_COLUMN = "__prediction_baseline"
# MLflow metric names allow letters, digits, _ - . space : and /.
_UNSAFE = re.compile(r"[^\w.\- :/]")
MAX_LOGGED_METRICS = 2000


def predict(model_uri: str, features: pd.DataFrame, role: str) -> np.ndarray:
    """
    Predictions of the pyfunc model at ``model_uri`` as a 1-D float array, one per row.

    :param model_uri: the model (``models:/...``, ``runs:/...``, a path).
    :param features: the model's input.
    :param role: ``candidate`` or ``baseline``, for messages.
    """
    import mlflow.pyfunc
    import numpy as np
    import pandas as pd

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as err:
        raise ValueError(f"evaluate_model: cannot load the {role} model {model_uri!r}: {err}") from err
    output = model.predict(features)
    if isinstance(output, pd.DataFrame | pd.Series):
        output = output.to_numpy()
    array = np.asarray(output, dtype="float64")
    if array.ndim == 2 and array.shape[1] in (1, 2):
        # (n, 2) is a binary classifier's predict_proba: the positive class is the last column.
        array = array[:, -1]
    if array.ndim != 1 or len(array) != len(features):
        raise ValueError(
            f"evaluate_model: the {role} model {model_uri!r} returned shape {array.shape} for "
            f"{len(features)} rows; it must return one score per row (a binary classifier's "
            "positive-class probability or a regression value; (n, 2) class probabilities are read "
            "as binary, positive class last)."
        )
    bad = int((~np.isfinite(array)).sum())
    if bad:
        raise ValueError(
            f"evaluate_model: the {role} model {model_uri!r} returned {bad} NaN/inf predictions "
            f"out of {len(array)}; fix the model (or run infra validation before evaluating)."
        )
    return array


def _frame_with_predictions(settings: EvaluateModelSpec) -> pd.DataFrame:
    from airflow_ml_provider.ml.training.context import read_table

    frame = read_table(settings.data_uri, settings.format)
    label, weight = settings.label_key, settings.example_weight_key
    for key, column in (("label_key", label), ("example_weight_key", weight)):
        if column and column not in frame.columns:
            raise ValueError(
                f"evaluate_model: {key} {column!r} is not a column of {settings.data_uri!r} "
                f"(columns: {', '.join(map(str, frame.columns[:30]))})."
            )
    columns = list(settings.feature_columns or [c for c in frame.columns if c not in (label, weight)])
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"evaluate_model: feature_columns {missing} are not in {settings.data_uri!r}.")
    features = frame[columns]
    frame[CANDIDATE_COLUMN] = predict(settings.candidate_model_uri, features, CANDIDATE)
    if settings.baseline_model_uri:
        frame[BASELINE_COLUMN] = predict(settings.baseline_model_uri, features, BASELINE)
    return frame


def metric_name(metric: str, slice_label: str, model: str = CANDIDATE) -> str:
    """
    The flattened MLflow metric name: ``auc`` (overall), ``auc/sex:F`` (a slice).

    Baseline values and diffs are prefixed ``baseline/`` and ``diff/``.
    """
    name = metric if slice_label == OVERALL else f"{metric}/{slice_label.replace('=', ':')}"
    if model != CANDIDATE:
        name = f"{model}/{name}"
    return _UNSAFE.sub("_", name)[:250]


def flatten_metrics(output: EvalOutput) -> dict[str, float]:
    """Every finite metric of every slice, candidate, baseline and diff, under readable names."""
    flat: dict[str, float] = {}
    for slice_label, models in output.metrics.items():
        candidate = models.get(CANDIDATE, {})
        baseline = models.get(BASELINE, {})
        for metric, value in candidate.items():
            flat[metric_name(metric, slice_label)] = value
            if metric in baseline:
                flat[metric_name(metric, slice_label, BASELINE)] = baseline[metric]
                flat[metric_name(metric, slice_label, "diff")] = value - baseline[metric]
    finite = {k: float(v) for k, v in flat.items() if isinstance(v, int | float) and math.isfinite(v)}
    if len(finite) > MAX_LOGGED_METRICS:
        log.warning(
            "%d metric values; logging the first %d to MLflow (all are in metrics.json).",
            len(finite),
            MAX_LOGGED_METRICS,
        )
        finite = dict(list(finite.items())[:MAX_LOGGED_METRICS])
    return finite


def _baseline_of(settings: EvaluateModelSpec) -> dict[str, Any] | None:
    """The baseline's name, alias, version and URI for the blessing; None without a baseline."""
    uri = settings.baseline_model_uri
    if not uri:
        return None
    given = settings.baseline or {}
    return {key: given.get(key) for key in ("model_name", "alias", "version")} | {"model_uri": uri}


def _write_outputs(staging: str, settings: EvaluateModelSpec, output: EvalOutput, config: Any) -> list[str]:
    from google.protobuf import text_format

    from airflow_ml_provider.ml.evaluation.beam_engine import threshold_table
    from airflow_ml_provider.ml.evaluation.report import write_report

    blessed = output.validation_ok
    blessing = {
        "blessed": blessed,
        "candidate_model_uri": settings.candidate_model_uri,
        "baseline_model_uri": settings.baseline_model_uri,
        # The registered version compared with (the champion at the time), not only its URI.
        "baseline": _baseline_of(settings),
        "failures": [f.__dict__ for f in output.failures],
        "engine": output.engine,
        "example_count": output.example_count,
    }
    with open(os.path.join(staging, "metrics.json"), "w") as handle:
        json.dump(output.to_dict(), handle, indent=1, default=str)
    with open(os.path.join(staging, "blessing.json"), "w") as handle:
        json.dump(blessing, handle, indent=1, default=str)
    with open(os.path.join(staging, "thresholds.json"), "w") as handle:
        json.dump(threshold_table(config), handle, indent=1)
    with open(os.path.join(staging, "eval_config.pbtxt"), "w") as handle:
        handle.write(text_format.MessageToString(config))
    written = write_report(
        output,
        staging,
        title=settings.title or "Model evaluation",
        candidate_uri=settings.candidate_model_uri,
        baseline_uri=settings.baseline_model_uri,
        blessed=blessed,
        context={str(k): str(v) for k, v in settings.context.items()},
    )
    return ["metrics.json", "blessing.json", "thresholds.json", "eval_config.pbtxt", *written.values()]


def evaluate_model(spec: dict[str, Any]) -> dict[str, Any]:
    """
    Evaluate the candidate (and baseline) on the dataset version; write the blessing.

    :param spec: an :class:`~airflow_ml_provider.ml.specs.EvaluateModelSpec` as a JSON dict.
    """
    settings = EvaluateModelSpec.parse(spec)
    from airflow_ml_provider.ml.evaluation.config import parse_eval_config, prepare_eval_config
    from airflow_ml_provider.ml.evaluation.engines import evaluate_frame

    config = prepare_eval_config(
        parse_eval_config(settings.eval_config),
        label_key=settings.label_key or "",  # empty: the label_key of eval_config's model spec
        candidate_column=CANDIDATE_COLUMN,
        baseline_column=BASELINE_COLUMN if settings.baseline_model_uri else None,
        example_weight_key=settings.example_weight_key,
    )
    if settings.tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(settings.tracking_uri)
    frame = _frame_with_predictions(settings)
    log.info(
        "Predicted %d rows with the candidate%s.",
        len(frame),
        " and the baseline" * (BASELINE_COLUMN in frame),
    )
    out_dir = settings.output_dir
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".evaluation-", dir=os.path.dirname(os.path.abspath(out_dir)))
    try:
        output = evaluate_frame(
            frame,
            config,
            engine=settings.engine,
            beam_pipeline_args=list(settings.beam_pipeline_args),
            workdir=staging,
        )
        artifacts = _write_outputs(staging, settings, output, config)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _result(settings, output, artifacts)


def _result(settings: EvaluateModelSpec, output: EvalOutput, artifacts: list[str]) -> dict[str, Any]:
    overall = output.metrics.get(OVERALL, {})
    blessed = output.validation_ok
    log.info(
        "%s: %s (%d examples, engine %s)%s",
        settings.candidate_model_uri,
        "BLESSED" if blessed else "NOT BLESSED",
        output.example_count,
        output.engine,
        "".join(f"\n  - {f.describe()}" for f in output.failures),
    )
    return {
        "blessed": blessed,
        "candidate_model_uri": settings.candidate_model_uri,
        "baseline_model_uri": settings.baseline_model_uri,
        "failed_thresholds": [f.describe() for f in output.failures],
        "failures": [f.__dict__ for f in output.failures],
        "metrics": overall.get(CANDIDATE, {}),
        "baseline_metrics": overall.get(BASELINE, {}),
        "example_count": output.example_count,
        "slice_count": len(output.metrics),
        "engine": output.engine,
        "notes": output.notes,
        "artifacts": artifacts,
        "mlflow": {
            "metrics": flatten_metrics(output),
            "params": {"engine": output.engine, "has_baseline": output.has_baseline},
            "tags": {"airflow_ml.blessed": str(blessed).lower()},
        },
    }
