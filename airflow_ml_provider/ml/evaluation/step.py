"""
The ``evaluate_model`` step: a candidate model against a baseline, per slice, with TFMA semantics,
on the new dataset version, a fixed holdout, or both.

Spec: :class:`~airflow_ml_provider.ml.specs.EvaluateModelSpec`, as a JSON dict.

Predictions come from ``mlflow.pyfunc`` for both models, so any framework MLflow can serve works.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.ml.evaluation.results import BASELINE, CANDIDATE, OVERALL, EvalOutput
from airflow_ml_provider.ml.specs.evaluation import METRIC_PREFIXES, EvaluateModelSpec

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

CANDIDATE_COLUMN = "__prediction_candidate"
BASELINE_COLUMN = "__prediction_baseline"
# MLflow metric names allow letters, digits, _ - . space : and /.
_UNSAFE = re.compile(r"[^\w.\- :/]")
MAX_LOGGED_METRICS = 2000


def load_model(model_uri: str, role: str) -> Any:
    """The pyfunc model at ``model_uri``; ``role`` (``candidate`` or ``baseline``) for messages."""
    import mlflow.pyfunc

    try:
        return mlflow.pyfunc.load_model(model_uri)
    except Exception as err:
        raise ValueError(f"evaluate_model: cannot load the {role} model {model_uri!r}: {err}") from err


def predict(model_uri: str, features: pd.DataFrame, role: str, model: Any = None) -> np.ndarray:
    """
    Predictions of the pyfunc model at ``model_uri`` as a 1-D float array, one per row.

    :param model_uri: the model (``models:/...``, ``runs:/...``, a path).
    :param features: the model's input.
    :param role: ``candidate`` or ``baseline``, for messages.
    :param model: the model already loaded from ``model_uri`` (loaded here when None).
    """
    import numpy as np
    import pandas as pd

    if model is None:
        model = load_model(model_uri, role)
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


def _frame_with_predictions(
    settings: EvaluateModelSpec, uri: str, fmt: str | None, models: dict[str, Any]
) -> pd.DataFrame:
    """The dataset at ``uri`` with a column of predictions per model (``models``: role -> loaded model)."""
    from airflow_ml_provider.ml.training.context import read_table

    frame = read_table(uri, fmt)
    label, weight = settings.label_key, settings.example_weight_key
    for key, column in (("label_key", label), ("example_weight_key", weight)):
        if column and column not in frame.columns:
            raise ValueError(
                f"evaluate_model: {key} {column!r} is not a column of {uri!r} "
                f"(columns: {', '.join(map(str, frame.columns[:30]))})."
            )
    columns = list(settings.feature_columns or [c for c in frame.columns if c not in (label, weight)])
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"evaluate_model: feature_columns {missing} are not in {uri!r}.")
    features = frame[columns]
    frame[CANDIDATE_COLUMN] = predict(settings.candidate_model_uri, features, CANDIDATE, models[CANDIDATE])
    if settings.baseline_model_uri:
        frame[BASELINE_COLUMN] = predict(settings.baseline_model_uri, features, BASELINE, models[BASELINE])
    return frame


@dataclass(frozen=True)
class Evaluated:
    """One dataset's evaluation: its name (``data``, ``holdout``), URI, numbers and artifact folder."""

    name: str
    data_uri: str
    output: EvalOutput
    folder: str  # relative to output_dir: "" for the first dataset, else its name

    @property
    def prefix(self) -> str:
        return METRIC_PREFIXES[self.name]

    def failures(self) -> list[dict[str, Any]]:
        return [{**f.__dict__, "dataset": self.name} for f in self.output.failures]

    @property
    def lead(self) -> str:
        """How its lines start in the result's lists: ``holdout: ``; nothing for the data."""
        return f"{self.name}: " if self.prefix else ""

    def failed_thresholds(self) -> list[str]:
        return [f"{self.lead}{f.describe()}" for f in self.output.failures]


def metric_name(metric: str, slice_label: str, model: str = CANDIDATE, prefix: str = "") -> str:
    """
    The flattened MLflow metric name: ``auc`` (overall), ``auc/sex:F`` (a slice).

    Baseline values and diffs are prefixed ``baseline/`` and ``diff/``; a holdout's numbers
    ``holdout/`` before that (``prefix``, see :data:`~airflow_ml_provider.ml.specs.evaluation.METRIC_PREFIXES`).
    """
    name = metric if slice_label == OVERALL else f"{metric}/{slice_label.replace('=', ':')}"
    if model != CANDIDATE:
        name = f"{model}/{name}"
    return _UNSAFE.sub("_", prefix + name)[:250]


def flatten_metrics(output: EvalOutput, prefix: str = "") -> dict[str, float]:
    """Every finite metric of every slice, candidate, baseline and diff, under readable names."""
    flat: dict[str, float] = {}
    for slice_label, models in output.metrics.items():
        candidate = models.get(CANDIDATE, {})
        baseline = models.get(BASELINE, {})
        for metric, value in candidate.items():
            flat[metric_name(metric, slice_label, prefix=prefix)] = value
            if metric in baseline:
                flat[metric_name(metric, slice_label, BASELINE, prefix)] = baseline[metric]
                flat[metric_name(metric, slice_label, "diff", prefix)] = value - baseline[metric]
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


def _dataset_summary(evaluated: Evaluated) -> dict[str, Any]:
    """What ``blessing.json`` says of one dataset: where it is, its verdict, where its numbers are."""
    output = evaluated.output
    return {
        "data_uri": evaluated.data_uri,
        "blessed": output.validation_ok,
        "failed_thresholds": len(output.failures),
        "example_count": output.example_count,
        "engine": output.engine,
        "metric_prefix": evaluated.prefix,
        "metrics_file": posixpath.join(evaluated.folder, "metrics.json"),
    }


def _write_outputs(
    staging: str, settings: EvaluateModelSpec, evaluated: list[Evaluated], config: Any
) -> list[str]:
    from google.protobuf import text_format

    from airflow_ml_provider.ml.evaluation.beam_engine import threshold_table
    from airflow_ml_provider.ml.evaluation.report import DatasetSection, write_report

    blessed = all(e.output.validation_ok for e in evaluated)
    first = evaluated[0].output
    blessing = {
        "blessed": blessed,
        "candidate_model_uri": settings.candidate_model_uri,
        "baseline_model_uri": settings.baseline_model_uri,
        # The registered version compared with (the champion at the time), not only its URI.
        "baseline": _baseline_of(settings),
        "failures": [f for e in evaluated for f in e.failures()],
        "engine": first.engine,
        "example_count": first.example_count,
        "evaluated_on": [e.name for e in evaluated],
        "datasets": {e.name: _dataset_summary(e) for e in evaluated},
    }
    written = []
    for each in evaluated:
        os.makedirs(os.path.join(staging, each.folder), exist_ok=True)
        with open(os.path.join(staging, each.folder, "metrics.json"), "w") as handle:
            json.dump(each.output.to_dict(), handle, indent=1, default=str)
        written.append(posixpath.join(each.folder, "metrics.json"))
    with open(os.path.join(staging, "blessing.json"), "w") as handle:
        json.dump(blessing, handle, indent=1, default=str)
    with open(os.path.join(staging, "thresholds.json"), "w") as handle:
        json.dump(threshold_table(config), handle, indent=1)
    with open(os.path.join(staging, "eval_config.pbtxt"), "w") as handle:
        handle.write(text_format.MessageToString(config))
    report = write_report(
        [DatasetSection(e.name, e.data_uri, e.output, e.folder) for e in evaluated],
        staging,
        title=settings.title or "Model evaluation",
        candidate_uri=settings.candidate_model_uri,
        baseline_uri=settings.baseline_model_uri,
        blessed=blessed,
        context={str(k): str(v) for k, v in settings.context.items()},
    )
    return [
        written[0],
        "blessing.json",
        "thresholds.json",
        "eval_config.pbtxt",
        *written[1:],
        *report.values(),
    ]


def _evaluate_dataset(
    settings: EvaluateModelSpec,
    config: Any,
    models: dict[str, Any],
    dataset: tuple[str, str, str | None],
    folder: str,
    staging: str,
) -> Evaluated:
    """Predict one dataset with both models and evaluate it; Beam's files go under ``folder``."""
    from airflow_ml_provider.ml.evaluation.engines import evaluate_frame

    name, uri, fmt = dataset
    frame = _frame_with_predictions(settings, uri, fmt, models)
    log.info(
        "%s (%s): predicted %d rows with the candidate%s.",
        name,
        uri,
        len(frame),
        " and the baseline" * (BASELINE_COLUMN in frame),
    )
    workdir = os.path.join(staging, folder)
    os.makedirs(workdir, exist_ok=True)
    output = evaluate_frame(
        frame,
        config,
        engine=settings.engine,
        beam_pipeline_args=list(settings.beam_pipeline_args),
        workdir=workdir,
    )
    return Evaluated(name, uri, output, folder)


def evaluate_model(spec: dict[str, Any]) -> dict[str, Any]:
    """
    Evaluate the candidate (and baseline) on each dataset (the new version, a holdout); write the
    blessing: blessed when the thresholds hold on every dataset evaluated.

    :param spec: an :class:`~airflow_ml_provider.ml.specs.EvaluateModelSpec` as a JSON dict.
    """
    settings = EvaluateModelSpec.parse(spec)
    from airflow_ml_provider.ml.evaluation.config import parse_eval_config, prepare_eval_config

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
    # Loaded once, whatever the number of datasets.
    models = {CANDIDATE: load_model(settings.candidate_model_uri, CANDIDATE)}
    if settings.baseline_model_uri:
        models[BASELINE] = load_model(settings.baseline_model_uri, BASELINE)
    out_dir = settings.output_dir
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".evaluation-", dir=os.path.dirname(os.path.abspath(out_dir)))
    try:
        evaluated = [
            _evaluate_dataset(settings, config, models, dataset, dataset[0] if index else "", staging)
            for index, dataset in enumerate(settings.datasets())
        ]
        artifacts = _write_outputs(staging, settings, evaluated, config)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _result(settings, evaluated, artifacts)


def _evaluation_summary(evaluated: Evaluated) -> dict[str, Any]:
    """One dataset's numbers for the result: the overall metrics of both models and the verdict."""
    output = evaluated.output
    overall = output.metrics.get(OVERALL, {})
    return {
        "data_uri": evaluated.data_uri,
        "blessed": output.validation_ok,
        "metrics": overall.get(CANDIDATE, {}),
        "baseline_metrics": overall.get(BASELINE, {}),
        "failed_thresholds": [f.describe() for f in output.failures],
        "example_count": output.example_count,
        "slice_count": len(output.metrics),
        "engine": output.engine,
        "metric_prefix": evaluated.prefix,
        "artifact_dir": evaluated.folder,
    }


def _result(settings: EvaluateModelSpec, evaluated: list[Evaluated], artifacts: list[str]) -> dict[str, Any]:
    first = evaluated[0].output
    overall = first.metrics.get(OVERALL, {})
    blessed = all(e.output.validation_ok for e in evaluated)
    for each in evaluated:
        log.info(
            "%s on %s (%s): %s (%d examples, engine %s)%s",
            settings.candidate_model_uri,
            each.name,
            each.data_uri,
            "BLESSED" if each.output.validation_ok else "NOT BLESSED",
            each.output.example_count,
            each.output.engine,
            "".join(f"\n  - {f.describe()}" for f in each.output.failures),
        )
    metrics: dict[str, float] = {}
    for each in evaluated:
        metrics.update(flatten_metrics(each.output, each.prefix))
    return {
        "blessed": blessed,
        "candidate_model_uri": settings.candidate_model_uri,
        "baseline_model_uri": settings.baseline_model_uri,
        "failed_thresholds": [line for e in evaluated for line in e.failed_thresholds()],
        "failures": [f for e in evaluated for f in e.failures()],
        "metrics": overall.get(CANDIDATE, {}),
        "baseline_metrics": overall.get(BASELINE, {}),
        "example_count": first.example_count,
        "slice_count": len(first.metrics),
        "engine": first.engine,
        "notes": [f"{e.lead}{note}" for e in evaluated for note in e.output.notes],
        "artifacts": artifacts,
        "evaluated_on": [e.name for e in evaluated],
        "evaluations": {e.name: _evaluation_summary(e) for e in evaluated},
        "mlflow": {
            "metrics": metrics,
            "params": {"engine": first.engine, "has_baseline": first.has_baseline},
            "tags": {"airflow_ml.blessed": str(blessed).lower()},
        },
    }
