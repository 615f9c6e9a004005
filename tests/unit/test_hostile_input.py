"""
Hostile input, property-based (hypothesis): whatever users give, a clear error or a safe result.

Each property feeds generated values into a function that takes user input (search spaces,
EvalConfig dicts and texts, schema files, version names, operator arguments) and accepts exactly
two outcomes: a valid result, or a ``ValueError`` whose message names the input. Any other
exception (KeyError, TypeError, AttributeError, a protobuf error ...) is a bug: a user would see
a stack trace instead of what to fix.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# JSON-like values, the shape of anything that arrives from a DAG file, a template or conf.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_like = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
param_names = st.sampled_from(["lr", "units", "batch_size", "optimizer", ""]) | st.text(max_size=8)
param_bodies = (
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["int", "float", "categorical", "str", "bool", ""]) | st.text(max_size=6),
            "low": scalars,
            "high": scalars,
            "step": scalars,
            "log": st.booleans() | scalars,
            "choices": st.lists(scalars, max_size=4) | scalars,
        },
    )
    | json_like
)


# -- tuning search spaces -------------------------------------------------------------------


VALID_SPACE = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
    "hidden_units": {"type": "int", "low": 8, "high": 128, "step": 8},
    "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
    "batch_size": [128, 256, 512],
}


@SETTINGS
@given(space=st.dictionaries(param_names, param_bodies, max_size=4) | json_like)
@example(space=VALID_SPACE)
@example(space={"lr": {"type": "float", "low": float("nan"), "high": 1.0}})
@example(space={"lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}})
def test_a_search_space_is_accepted_or_refused_with_a_value_error(space: Any) -> None:
    from airflow_ml_provider.ml.tuning.space import distributions, parse_search_space

    try:
        parsed = parse_search_space(space)
    except ValueError as err:
        assert str(err), "an empty message tells the user nothing"
        return
    # Accepted: every range is usable by Optuna as it is.
    for name, spec in parsed.items():
        assert isinstance(name, str)
        if spec.low is not None:
            assert math.isfinite(spec.low) and math.isfinite(spec.high) and spec.low <= spec.high
    assert set(distributions(parsed)) == set(parsed)


# -- evaluation configs ---------------------------------------------------------------------

metric_entries = st.fixed_dictionaries(
    {
        "class_name": st.sampled_from(
            ["AUC", "ExampleCount", "BinaryAccuracy", "Precision", "NoSuchMetric", ""]
        )
    },
    optional={
        "threshold": st.fixed_dictionaries(
            {},
            optional={
                "value_threshold": st.fixed_dictionaries(
                    {}, optional={"lower_bound": scalars, "upper_bound": scalars}
                ),
                "change_threshold": st.fixed_dictionaries(
                    {},
                    optional={
                        "direction": st.sampled_from(
                            ["HIGHER_IS_BETTER", "LOWER_IS_BETTER", "UNKNOWN", "up"]
                        ),
                        "absolute": scalars,
                        "relative": scalars,
                    },
                ),
            },
        )
        | json_like,
        "config": json_like,
    },
)
eval_configs = st.fixed_dictionaries(
    {},
    optional={
        "model_specs": st.lists(
            st.fixed_dictionaries({}, optional={"label_key": st.text(max_size=8) | scalars}), max_size=2
        )
        | json_like,
        "slicing_specs": st.lists(
            st.fixed_dictionaries({}, optional={"feature_keys": st.lists(st.text(max_size=6), max_size=2)}),
            max_size=3,
        )
        | json_like,
        "metrics_specs": st.lists(
            st.fixed_dictionaries({"metrics": st.lists(metric_entries, max_size=3)}), max_size=2
        )
        | json_like,
    },
)


@pytest.mark.steps
@SETTINGS
@given(config=eval_configs | json_like)
@example(
    config={
        "metrics_specs": [
            {"metrics": [{"class_name": "AUC", "threshold": {"value_threshold": {"lower_bound": 0.6}}}]}
        ]
    }
)
@example(
    config={
        "metrics_specs": [
            {"metrics": [{"class_name": "AUC", "threshold": {"change_threshold": {"absolute": -0.01}}}]}
        ]
    }
)
def test_an_eval_config_is_accepted_or_refused_naming_eval_config(config: Any) -> None:
    from airflow_ml_provider.ml.evaluation.config import parse_eval_config, prepare_eval_config

    try:
        parsed = parse_eval_config(config)
        prepare_eval_config(parsed, label_key="label", candidate_column="pred_c", baseline_column="pred_b")
    except ValueError as err:
        assert str(err).startswith("eval_config"), str(err)


@pytest.mark.steps
@SETTINGS
@given(text=st.text(max_size=200))
def test_an_eval_config_text_is_accepted_or_refused_naming_eval_config(text: str) -> None:
    from airflow_ml_provider.ml.evaluation.config import parse_eval_config

    try:
        parse_eval_config(text)
    except ValueError as err:
        assert str(err).startswith("eval_config"), str(err)


# -- schema files ---------------------------------------------------------------------------


@pytest.mark.steps
@SETTINGS
@given(content=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
@example(content=b'feature { name: "age" type: INT }')
@example(content=b"\xff\xfe")
def test_a_schema_file_is_read_or_refused_naming_the_file(content: bytes, tmp_path_factory: Any) -> None:
    from airflow_ml_provider.ml.validation.schema import load_schema

    path = Path(tmp_path_factory.mktemp("schema")) / "schema.pbtxt"
    path.write_bytes(content)
    try:
        load_schema(str(path))
    except ValueError as err:
        assert str(path) in str(err)


# -- dataset version names ------------------------------------------------------------------


@SETTINGS
@given(
    name=st.text(max_size=40)
    | st.sampled_from(["..", ".", "../x", "a/../../b", "x\\y", "/etc", "~root", "v=1\n"])
)
@example(name="0007")
@example(name="0007\n")  # "$" in a regex also matches before a final newline
@example(name="2026-12-04T10:00:00Z")
def test_an_accepted_version_name_never_leaves_the_dataset_root(name: str, tmp_path_factory: Any) -> None:
    from airflow_ml_provider.hooks.datasets import check_version_name

    reason = check_version_name(name)
    if reason is not None:
        assert reason
        return
    root = Path(tmp_path_factory.mktemp("root")).resolve()
    target = (root / f"version={name}").resolve()
    assert target.parent == root, f"{name!r} escapes {root}"
    assert os.sep not in name and "\x00" not in name and name.strip() == name


# -- operator arguments ---------------------------------------------------------------------


@SETTINGS
@given(
    launcher=st.sampled_from(["local", "kubernetes", "ssh", ""]) | st.text(max_size=6),
    workers=st.integers(min_value=-3, max_value=300) | scalars,
    strategy=st.sampled_from(["mirrored", "multi_worker_mirrored", "one_device", "tpu"])
    | st.text(max_size=6),
)
@example(launcher="local", workers=2, strategy="multi_worker_mirrored")
def test_training_arguments_are_checked_with_errors_that_name_the_argument(
    launcher: Any, workers: Any, strategy: Any
) -> None:
    from airflow_ml_provider.operators.training import DistributedTrainingOperator

    try:
        operator = DistributedTrainingOperator(
            task_id="train",
            run_fn="airflow_ml_provider.ml.training.demo:run_fn",
            train_uri="/data/train",
            launcher=launcher,
            workers=workers,
            strategy=strategy,
        )
        operator._check_arguments()  # what execute() checks first, after templates are rendered
    except (ValueError, TypeError) as err:
        message = str(err)
        assert any(word in message for word in ("launcher", "workers", "strategy")), message
