"""Read a TFMA ``EvalConfig`` from what a DAG author writes, and fit it to the two models."""

from __future__ import annotations

import difflib
import importlib
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.ml.evaluation.results import BASELINE, CANDIDATE

if TYPE_CHECKING:
    from tensorflow_model_analysis.proto.config_pb2 import EvalConfig

COMMON_METRICS = (
    "ExampleCount",
    "WeightedExampleCount",
    "AUC",
    "AUCPrecisionRecall",
    "BinaryAccuracy",
    "Precision",
    "Recall",
    "F1Score",
    "Calibration",
    "MeanLabel",
    "MeanPrediction",
    "MeanSquaredError",
    "MeanAbsoluteError",
)
TF_LOSSES_MODULE = "tf_keras.losses"


def parse_eval_config(value: Any) -> EvalConfig:
    """
    An ``EvalConfig`` from a dict (protobuf JSON mapping), a JSON string, a text proto or a proto.

    :param value: the ``eval_config`` argument.
    :raises ValueError: naming the input and the parser's complaint.
    """
    from google.protobuf import json_format, text_format
    from tensorflow_model_analysis.proto import config_pb2

    if isinstance(value, config_pb2.EvalConfig):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"eval_config: looks like JSON but does not parse: {str(err).rstrip('.')}. Fix the JSON, or give a "
                    "dict or a text proto."
                ) from err
        else:
            try:
                return text_format.Parse(text, config_pb2.EvalConfig())
            except text_format.ParseError as err:
                raise ValueError(
                    f"eval_config: not a valid EvalConfig text proto: {str(err).rstrip('.')}. Give a dict, JSON or a "
                    "text proto with metrics_specs and slicing_specs (see docs/evaluation.md)."
                ) from err
    if not isinstance(value, dict):
        raise ValueError(
            f"eval_config: must be a dict, a JSON string or a text proto, got {type(value).__name__}."
        )
    try:
        return json_format.ParseDict(_metric_configs_as_json(value), config_pb2.EvalConfig())
    except (json_format.ParseError, TypeError, AttributeError) as err:
        raise ValueError(
            f"eval_config: not a valid EvalConfig: {str(err).rstrip('.')}. Field names are those of "
            "TFMA's EvalConfig proto (metrics_specs, slicing_specs, model_specs, options)."
        ) from err


def _metric_configs_as_json(value: dict[str, Any]) -> dict[str, Any]:
    """Let ``metrics[].config`` be a dict: the proto field is a JSON string."""
    specs = value.get("metrics_specs", value.get("metricsSpecs"))
    if not isinstance(specs, list):
        return value
    fixed_specs = []
    for spec in specs:
        metrics = spec.get("metrics") if isinstance(spec, dict) else None
        if isinstance(metrics, list):
            metrics = [
                {**m, "config": json.dumps(m["config"])}
                if isinstance(m, dict) and isinstance(m.get("config"), dict)
                else m
                for m in metrics
            ]
            spec = {**spec, "metrics": metrics}
        fixed_specs.append(spec)
    key = "metrics_specs" if "metrics_specs" in value else "metricsSpecs"
    return {**value, key: fixed_specs}


def prepare_eval_config(
    config: EvalConfig,
    *,
    label_key: str,
    candidate_column: str,
    baseline_column: str | None,
    example_weight_key: str | None = None,
) -> EvalConfig:
    """
    The config TFMA runs: model specs ``candidate`` (and ``baseline``) reading the predictions.

    The author writes at most one ``model_specs`` entry (for ``label_key`` or
    ``example_weight_key``); the models are named here and their ``prediction_key`` is set to the
    prediction columns. Without a baseline (no champion yet) the change thresholds are dropped and
    the single model spec is unnamed, exactly as TFMA does when it "rubber stamps" a first model
    (``update_eval_config_with_defaults(has_baseline=False, rubber_stamp=True)``).

    :param config: the parsed config.
    :param label_key: label column, unless the model spec names one.
    :param candidate_column: column with the candidate's predictions.
    :param baseline_column: column with the baseline's predictions, or None.
    :param example_weight_key: weight column, unless the model spec names one.
    :raises ValueError: for configs TFMA would reject or that cannot bless anything.
    """
    from tensorflow_model_analysis.proto import config_pb2
    from tensorflow_model_analysis.utils import config_util

    user = _user_model_spec(config, label_key)
    check_metric_names(config)
    prepared = config_pb2.EvalConfig()
    prepared.CopyFrom(config)
    del prepared.model_specs[:]
    if not prepared.slicing_specs:
        prepared.slicing_specs.add()  # overall
    for name, column in ((CANDIDATE, candidate_column), (BASELINE, baseline_column)):
        if column is None:
            continue
        spec = prepared.model_specs.add()
        spec.CopyFrom(user)
        spec.name = name
        spec.prediction_key = column
        spec.label_key = user.label_key or label_key
        if example_weight_key and not user.example_weight_key:
            spec.example_weight_key = example_weight_key
        spec.is_baseline = name == BASELINE
    for metrics_spec in prepared.metrics_specs:
        del metrics_spec.model_names[:]
    try:
        config_util.verify_eval_config(prepared)
    except ValueError as err:
        raise ValueError(f"eval_config: {err}") from err
    if baseline_column is None:
        prepared = config_util.update_eval_config_with_defaults(
            prepared, has_baseline=False, rubber_stamp=True
        )
    _check_builds(prepared)
    _check_change_directions(prepared)
    return prepared


def _user_model_spec(config: EvalConfig, label_key: str) -> Any:
    from tensorflow_model_analysis.proto import config_pb2

    if len(config.model_specs) > 1:
        raise ValueError(
            f"eval_config: {len(config.model_specs)} model_specs given; write at most one (for "
            "label_key / example_weight_key): the candidate and baseline specs are added for you."
        )
    if not config.metrics_specs or not any(spec.metrics or spec.thresholds for spec in config.metrics_specs):
        raise ValueError("eval_config: no metrics_specs; list the metrics (and thresholds) to compute.")
    user = config.model_specs[0] if config.model_specs else config_pb2.ModelSpec()
    if not (user.label_key or label_key):
        raise ValueError("eval_config: no label column; set label_key (or model_specs[0].label_key).")
    return user


def check_metric_names(config: EvalConfig) -> None:
    """
    Reject metric ``class_name`` values that neither TFMA nor Keras knows, before TFMA runs.

    :param config: the parsed config.
    :raises ValueError: naming the metric and listing close valid names.
    """
    from tensorflow_model_analysis.metrics import metric_types

    tfma_names = set(metric_types.registered_metrics())
    keras_names: set[str] | None = None
    for metrics_spec in config.metrics_specs:
        for metric in metrics_spec.metrics:
            name = metric.class_name
            if not name:
                raise ValueError("eval_config: a metrics_specs entry has a metric without class_name.")
            if metric.module:
                _check_module_metric(name, metric.module)
                continue
            if name in tfma_names:
                continue
            if keras_names is None:
                keras_names = _keras_metric_names()
            if name not in keras_names:
                raise ValueError(
                    f"eval_config: unknown metric class_name {name!r}. "
                    f"{_suggest(name, tfma_names | keras_names)} TFMA metrics are listed in "
                    "tfma.metrics; a custom metric needs its module set."
                )


def _keras_metric_names() -> set[str]:
    import tf_keras

    return {name for name, value in vars(tf_keras.metrics).items() if callable(value) and name[:1] != "_"}


def _check_module_metric(name: str, module: str) -> None:
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError as err:
        raise ValueError(
            f"eval_config: metric {name!r} names module {module!r}, which does not import: {err}. "
            "Install it where the evaluation runs, or fix the module name."
        ) from err
    if found is None:
        raise ValueError(
            f"eval_config: metric {name!r} is not defined in module {module!r}; fix class_name or module."
        )


def _suggest(name: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(names), n=5, cutoff=0.6)
    lower = [n for n in sorted(names) if n.lower() == name.lower() and n not in close]
    close = lower + close
    if close:
        return f"Did you mean {', '.join(close)}?"
    return f"Common ones: {', '.join(COMMON_METRICS)}."


def _check_change_directions(config: EvalConfig) -> None:
    from tensorflow_model_analysis.metrics import metric_specs
    from tensorflow_model_analysis.proto import config_pb2

    thresholds = metric_specs.metric_thresholds_from_metrics_specs(config.metrics_specs, eval_config=config)
    for key, pairs in thresholds.items():
        for _slice, threshold in pairs:
            if isinstance(threshold, config_pb2.GenericChangeThreshold) and threshold.direction not in (
                config_pb2.MetricDirection.HIGHER_IS_BETTER,
                config_pb2.MetricDirection.LOWER_IS_BETTER,
            ):
                raise ValueError(
                    f"eval_config: the change_threshold of metric {key.name!r} has no direction; set "
                    "direction to HIGHER_IS_BETTER or LOWER_IS_BETTER."
                )


def _check_builds(config: EvalConfig) -> None:
    """Let TFMA build the metric computations now, so a bad metric config fails before any data."""
    from tensorflow_model_analysis.metrics import metric_specs

    try:
        full = with_defaults(config)
        metric_specs.to_computations(full.metrics_specs, eval_config=full)
    except Exception as err:  # TFMA raises ValueError, TypeError, KeyError ... for bad configs
        raise ValueError(f"eval_config: TFMA cannot build the metrics: {type(err).__name__}: {err}") from err


def with_defaults(config: EvalConfig) -> EvalConfig:
    """
    The config as TFMA's pipeline sees it: model names filled into the metrics specs.

    :param config: a config from :func:`prepare_eval_config`.
    """
    from tensorflow_model_analysis.utils import config_util

    has_baseline = any(spec.is_baseline for spec in config.model_specs)
    return config_util.update_eval_config_with_defaults(
        config, has_baseline=has_baseline, rubber_stamp=not has_baseline
    )


def all_slicing_specs(config: EvalConfig) -> list[Any]:
    """
    The slicing specs of ``config``, those inside ``cross_slicing_specs`` included.

    :param config: an EvalConfig.
    """
    specs = list(config.slicing_specs)
    for cross in config.cross_slicing_specs:
        specs += [cross.baseline_spec, *cross.slicing_specs]
    return specs


def needed_columns(config: EvalConfig) -> list[str]:
    """
    The columns of the data that an evaluation of ``config`` reads, in a stable order.

    :param config: a config from :func:`prepare_eval_config`.
    """
    columns: list[str] = []
    for spec in config.model_specs:
        columns += [spec.label_key, spec.prediction_key, spec.example_weight_key]
    for slicing in all_slicing_specs(config):
        columns += [*slicing.feature_keys, *slicing.feature_values]
    return list(dict.fromkeys(c for c in columns if c))


def check_against_frame(config: EvalConfig, columns: Iterable[str]) -> None:
    """
    Reject configs that name columns the data does not have, before any pipeline starts.

    :param config: a config from :func:`prepare_eval_config`.
    :param columns: the columns of the evaluation data.
    :raises ValueError: naming the missing column and listing the data's columns.
    """
    have = [str(c) for c in columns]
    listed = ", ".join(sorted(have)[:30]) + (" ..." if len(have) > 30 else "")
    for spec in config.model_specs:
        for what, column in (
            ("label_key", spec.label_key),
            ("example_weight_key", spec.example_weight_key),
            ("prediction column", spec.prediction_key),
        ):
            if column and column not in have:
                raise ValueError(
                    f"eval_config: {what} {column!r} is not a column of the evaluation data "
                    f"(columns: {listed})."
                )
    for slicing in all_slicing_specs(config):
        for key in [*slicing.feature_keys, *slicing.feature_values]:
            if key not in have:
                raise ValueError(
                    f"eval_config: slicing_specs name feature {key!r}, which is not a column of the "
                    f"evaluation data (columns: {listed}); slice on one of those, or add the column."
                )
