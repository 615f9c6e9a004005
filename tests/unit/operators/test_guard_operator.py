"""ChampionGuardOperator's argument checks and outlets (no server: the checks run before any call)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from airflow.sdk import Asset, AssetAlias
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_ml_provider.hooks.live_metric import CallableMetric, ServingRunMetric, SqlMetric
from airflow_ml_provider.operators.guard import ChampionGuardOperator

pytestmark = pytest.mark.unit


def guard(**overrides: Any) -> ChampionGuardOperator:
    kwargs: dict[str, Any] = {
        "task_id": "guard",
        "model_name": "churn",
        "metric": "live_auc",
        "metric_callable": "pkg.mod:fn",
        "lower_bound": 0.6,
        "window": 60,
        "check_interval": 5,
        **overrides,
    }
    return ChampionGuardOperator(**kwargs)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"metric_callable": None}, "give exactly one metric source .* got none"),
        ({"sql": "SELECT 1", "sql_conn_id": "db"}, "got metric_callable, sql"),
        ({"metric_callable": "pkg.mod.fn"}, "'package.module:function'"),
        ({"metric_callable": None, "sql": "SELECT 1"}, "sql needs sql_conn_id"),
        (
            {"metric_callable": None, "serving_experiment": "s", "serving_run_filter": "tags.v = '{ver}'"},
            "only {model_name} and {version}",
        ),
        ({"lower_bound": None}, "give lower_bound .* or upper_bound"),
        ({"lower_bound": "high"}, "lower_bound must be a number"),
        ({"upper_bound": 0.5}, "lower_bound 0.6 must be below upper_bound 0.5"),
        ({"window": 0}, "window and check_interval must be positive"),
        ({"consecutive_breaches": 2.5}, "consecutive_breaches must be a whole number"),
        ({"consecutive_breaches": 20}, "20 consecutive checks every 5 s do not fit in a window of 60 s"),
        ({"on_no_data": "skip"}, "on_no_data='skip' is not one of fail, warn"),
        ({"model_name": ""}, "model_name must be a non-empty name"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        guard(**overrides)._check_arguments()


def test_rendered_templates_become_numbers_and_unset_sources_are_ignored() -> None:
    args = guard(
        window="20",
        check_interval="0.5",
        consecutive_breaches="3",
        upper_bound="None",
        sql="",
        serving_experiment="None",
    )._check_arguments()
    assert (args["window"], args["check_interval"], args["consecutive_breaches"]) == (20.0, 0.5, 3)
    assert (args["lower_bound"], args["upper_bound"]) == (0.6, None)
    assert args["source"] == CallableMetric("pkg.mod:fn")


def test_each_source_is_built_from_its_arguments() -> None:
    serving = guard(metric_callable=None, serving_experiment="churn_serving", mlflow_conn_id="reg")
    assert serving._check_arguments()["source"] == ServingRunMetric(
        "live_auc", "churn_serving", mlflow_conn_id="reg"
    )
    sql = guard(metric_callable=None, sql="SELECT 0.7", sql_conn_id="metrics")
    assert sql._check_arguments()["source"] == SqlMetric("SELECT 0.7", "metrics")


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), ("", None), ("None", None), ("2", "2"), (3, "3")]
)
def test_version(value: Any, expected: str | None) -> None:
    assert ChampionGuardOperator._version(value) == expected


@pytest.mark.parametrize("value", ["v2", "0", "1.5", True])
def test_version_rejects_non_versions(value: Any) -> None:
    with pytest.raises(ValueError, match="version must be a model version number"):
        ChampionGuardOperator._version(value)


def test_rollback_assets_reach_their_asset_through_an_alias_outlet() -> None:
    deployed = Asset("churn_champion")
    report = Asset("churn_guard_report")
    operator = guard(outlets=[report], rollback_assets=[deployed])
    assert operator.outlets == [report, AssetAlias("champion_guard_rollback.churn_champion")]
    assert operator.rollback_assets == [deployed]
    assert guard().outlets == []


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=150, deadline=None)
@given(
    lower=scalars,
    upper=scalars,
    window=scalars,
    interval=scalars,
    needed=scalars,
    version=scalars,
    source=st.sampled_from(["metric_callable", "serving_experiment", "sql"]),
    source_value=scalars,
    on_no_data=scalars,
)
def test_any_rendered_value_is_accepted_or_refused_with_a_value_error(
    lower, upper, window, interval, needed, version, source, source_value, on_no_data
):
    """Whatever a template or conf renders to: a valid guard, or a ValueError naming what is wrong."""
    operator = guard(
        **{"metric_callable": None, source: source_value},
        lower_bound=lower,
        upper_bound=upper,
        window=window,
        check_interval=interval,
        consecutive_breaches=needed,
        on_no_data=on_no_data,
    )
    try:
        args = operator._check_arguments()
    except ValueError as err:
        assert str(err)
    else:
        assert args["window"] > 0 and args["check_interval"] > 0 and args["consecutive_breaches"] >= 1
        assert math.isfinite(args["window"]) and (args["lower_bound"], args["upper_bound"]) != (None, None)
    try:
        ChampionGuardOperator._version(version)
    except ValueError as err:
        assert "version must be" in str(err)
