"""Read a TFMA ``EvalConfig`` from what a DAG author writes, and fit it to the two models."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.ml.evaluation.results import BASELINE, CANDIDATE

if TYPE_CHECKING:
    from tensorflow_model_analysis.proto.config_pb2 import EvalConfig


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
                raise ValueError(f"eval_config: looks like JSON but does not parse: {err}.") from err
        else:
            try:
                return text_format.Parse(text, config_pb2.EvalConfig())
            except text_format.ParseError as err:
                raise ValueError(
                    f"eval_config: not a valid EvalConfig text proto: {err}. Give a dict, JSON or a "
                    "text proto with metrics_specs and slicing_specs (see docs/evaluation.md)."
                ) from err
    if not isinstance(value, dict):
        raise ValueError(
            f"eval_config: must be a dict, a JSON string or a text proto, got {type(value).__name__}."
        )
    try:
        return json_format.ParseDict(value, config_pb2.EvalConfig())
    except json_format.ParseError as err:
        raise ValueError(f"eval_config: not a valid EvalConfig: {err}.") from err


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
    ``example_weight_key``); the models are named here. Without a baseline (no champion yet) the
    change thresholds are dropped, as TFMA does when it "rubber stamps" a first model.

    :param config: the parsed config.
    :param label_key: label column, unless the model spec names one.
    :param candidate_column: column with the candidate's predictions.
    :param baseline_column: column with the baseline's predictions, or None.
    :param example_weight_key: weight column, unless the model spec names one.
    """
    from tensorflow_model_analysis.proto import config_pb2
    from tensorflow_model_analysis.utils import config_util

    if len(config.model_specs) > 1:
        raise ValueError(
            f"eval_config: {len(config.model_specs)} model_specs given; write at most one (for "
            "label_key / example_weight_key): the candidate and baseline specs are added for you."
        )
    if not config.metrics_specs:
        raise ValueError("eval_config: no metrics_specs; list the metrics (and thresholds) to compute.")
    user = config.model_specs[0] if config.model_specs else config_pb2.ModelSpec()
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
    if baseline_column is None:
        prepared = config_util.update_eval_config_with_defaults(
            prepared, has_baseline=False, rubber_stamp=True
        )
    return prepared


def check_against_frame(config: EvalConfig, columns: list[str]) -> None:
    """Reject configs that name columns the data does not have, before any pipeline starts."""
    have = set(columns)
    for spec in config.model_specs:
        for what, column in (("label_key", spec.label_key), ("example_weight_key", spec.example_weight_key)):
            if column and column not in have:
                raise ValueError(
                    f"eval_config: {what} {column!r} is not a column of the evaluation data "
                    f"(columns: {', '.join(sorted(have)[:30])})."
                )
    for slicing in config.slicing_specs:
        for key in [*slicing.feature_keys, *slicing.feature_values]:
            if key not in have:
                raise ValueError(
                    f"eval_config: slicing_specs name feature {key!r}, which is not a column of the "
                    f"evaluation data (columns: {', '.join(sorted(have)[:30])})."
                )
