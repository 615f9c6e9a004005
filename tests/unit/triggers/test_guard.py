"""ChampionGuardTrigger and the watch it shares with the operator: serialization and judging."""

from __future__ import annotations

import json
import math

import pytest

from airflow_ml_provider.hooks.live_metric import (
    CallableMetric,
    GuardSpec,
    ServingRunMetric,
    SqlMetric,
    as_value,
    breaches,
    describe_bounds,
    source_from_dict,
    source_to_dict,
)
from airflow_ml_provider.triggers.guard import ChampionGuardTrigger

pytestmark = pytest.mark.unit

SPEC = GuardSpec(
    model_name="churn",
    version="2",
    metric="live_auc",
    source={"kind": "callable", "path": "support.guard_metrics:scripted"},
    lower_bound=0.6,
)


def test_serialize_round_trip() -> None:
    trigger = ChampionGuardTrigger(SPEC.to_dict(), check_interval=2.0, end_at=1_900_000_000.5)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_ml_provider.triggers.guard.ChampionGuardTrigger"
    assert kwargs == {"guard": SPEC.to_dict(), "check_interval": 2.0, "end_at": 1_900_000_000.5}
    assert json.loads(json.dumps(kwargs)) == kwargs  # the triggerer stores them in the database
    module, _, cls = classpath.rpartition(".")
    rebuilt = getattr(__import__(module, fromlist=[cls]), cls)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert GuardSpec.from_dict(kwargs["guard"]) == SPEC


@pytest.mark.parametrize(
    "source",
    [
        CallableMetric("pkg.mod:fn"),
        ServingRunMetric("live_auc", "churn_serving", mlflow_conn_id="reg"),
        SqlMetric("SELECT auc FROM m WHERE version = %(version)s", "metrics"),
    ],
)
def test_every_source_survives_json(source) -> None:
    data = source_to_dict(source)
    assert data["kind"] == source.kind
    assert source_from_dict(json.loads(json.dumps(data))) == source


@pytest.mark.parametrize(
    ("value", "lower", "upper", "breached"),
    [
        (0.5, 0.6, None, True),
        (0.6, 0.6, None, False),  # the bound itself is fine
        (0.7, 0.6, None, False),
        (120.0, None, 100.0, True),
        (100.0, None, 100.0, False),
        (0.05, 0.1, 0.9, True),
        (0.95, 0.1, 0.9, True),
        (0.5, 0.1, 0.9, False),
    ],
)
def test_breaches(value: float, lower: float | None, upper: float | None, breached: bool) -> None:
    assert breaches(value, lower, upper) is breached


def test_describe_bounds_says_which_direction_is_bad() -> None:
    assert describe_bounds(0.6, None) == "< 0.6 (lower_bound)"
    assert describe_bounds(None, 250) == "> 250 (upper_bound)"
    assert describe_bounds(0.1, 0.9) == "< 0.1 (lower_bound) or > 0.9 (upper_bound)"


def test_as_value_takes_numbers_and_treats_none_and_nan_as_no_value() -> None:
    from decimal import Decimal

    assert as_value(Decimal("0.75"), "q") == 0.75  # PostgreSQL's numeric
    assert as_value("0.5", "q") == 0.5
    assert as_value(None, "q") is None
    assert as_value(math.nan, "q") is None
    for bad in (True, "high", [0.5]):
        with pytest.raises(TypeError, match="not a number"):
            as_value(bad, "q")


def test_serving_filter_quotes_the_model_name() -> None:
    source = ServingRunMetric("live_auc", "churn_serving")
    assert source.filter_for("o'brien", "2") == "tags.model_name = 'o\\'brien' and tags.model_version = '2'"
