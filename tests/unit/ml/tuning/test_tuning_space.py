"""Search spaces as plain data: every bad entry is named with what to give instead; good ones map onto Optuna."""

from __future__ import annotations

import pytest

from airflow_ml_provider.ml.tuning.space import grid_search_space, parse_search_space

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({}, "search_space is empty"),
        ([1, 2], "search_space must be a dict of parameter name -> range, got list"),
        ("{'lr': [1, 2]}", "search_space must be a dict"),
        ({"": [1]}, "parameter names must be non-empty strings"),
        ({"lr": 0.1}, r"search_space\['lr'\]: give a dict such as"),
        (
            {"lr": {"type": "flaot", "low": 0, "high": 1}},
            "type must be one of int, float, categorical, got 'flaot'. Did you mean 'float'",
        ),
        ({"lr": {"low": 0, "high": 1}}, "type must be one of"),
        (
            {"lr": {"type": "float", "low": 0, "hihg": 1}},
            "unknown key 'hihg' for a float parameter.*Did you mean 'high'",
        ),
        ({"lr": {"type": "float", "low": 0}}, "a float parameter needs 'high'"),
        ({"lr": {"type": "float", "low": "0.1", "high": 1}}, "low must be a number, got '0.1'"),
        ({"lr": {"type": "float", "low": True, "high": 1}}, "low must be a number, got True"),
        ({"lr": {"type": "float", "low": 0, "high": float("inf")}}, "high must be finite"),
        ({"lr": {"type": "float", "low": 1, "high": 0.1}}, r"low \(1\) is above high \(0.1\)"),
        (
            {"lr": {"type": "float", "low": 0, "high": 1, "log": True}},
            "a log-scale range needs low > 0, got 0",
        ),
        ({"lr": {"type": "float", "low": 0.1, "high": 1, "log": "yes"}}, "log must be true or false"),
        (
            {"lr": {"type": "float", "low": 0.1, "high": 1, "log": True, "step": 0.1}},
            "give either log=True or a step",
        ),
        ({"n": {"type": "int", "low": 1.5, "high": 4}}, "low of an int parameter must be a whole number"),
        (
            {"n": {"type": "int", "low": 8, "high": 100, "step": 8}},
            r"is not a multiple of step \(8\); set high to 96",
        ),
        ({"n": {"type": "int", "low": 1, "high": 9, "step": 0}}, "step must be > 0"),
        ({"opt": {"type": "categorical", "choices": []}}, "choices must be a non-empty list"),
        ({"opt": {"type": "categorical"}}, "choices must be a non-empty list, got None"),
        ({"opt": ["adam", {"name": "sgd"}]}, "choices may be strings, numbers, booleans or null, got dict"),
        ({"opt": ["adam", "adam"]}, "choice 'adam' is listed twice"),
        ({"opt": [1.0, float("nan")]}, "is not a finite number"),
        (
            {"opt": {"type": "categorical", "choices": ["a"], "low": 1}},
            "unknown key 'low' for a categorical parameter",
        ),
    ],
)
def test_bad_search_spaces_are_named(space, message):
    with pytest.raises(ValueError, match=message):
        parse_search_space(space)


def test_a_name_both_fixed_and_tuned_is_refused():
    with pytest.raises(ValueError, match="'epochs' is both in search_space and in the fixed hyperparameters"):
        parse_search_space({"epochs": [5, 10]}, fixed={"epochs": 3})


def test_good_spaces_become_optuna_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = parse_search_space(
        {
            "lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
            "units": {"type": "int", "low": 8, "high": 128, "step": 8},
            "wide": {"type": "int", "low": 1, "high": 1024, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
            "opt": ["adam", "sgd"],
            "flag": {"type": "categorical", "choices": [True, False, None]},
        }
    )
    assert space["lr"].distribution() == FloatDistribution(1e-4, 0.1, log=True)
    assert space["units"].distribution() == IntDistribution(8, 128, step=8)
    assert space["wide"].distribution() == IntDistribution(1, 1024, log=True)
    assert space["dropout"].distribution() == FloatDistribution(0.0, 0.5, step=0.1)
    assert space["opt"].distribution() == CategoricalDistribution(["adam", "sgd"])
    assert space["flag"].distribution() == CategoricalDistribution([True, False, None])


def test_grids_enumerate_finite_parameters_only():
    space = parse_search_space(
        {
            "units": {"type": "int", "low": 8, "high": 32, "step": 8},
            "dropout": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
            "opt": ["a", "b"],
        }
    )
    assert grid_search_space(space) == {
        "units": [8, 16, 24, 32],
        "dropout": [0.0, 0.1, 0.2, 0.3],
        "opt": ["a", "b"],
    }
    with pytest.raises(
        ValueError,
        match=r"search_space\['lr'\]: the grid sampler needs a finite set of values; give this float a step",
    ):
        grid_search_space(parse_search_space({"lr": {"type": "float", "low": 0.1, "high": 1}}))
    with pytest.raises(ValueError, match="cannot enumerate a log-scale int"):
        grid_search_space(parse_search_space({"n": {"type": "int", "low": 1, "high": 64, "log": True}}))
    with pytest.raises(ValueError, match="the grid has 1,000,000 points"):
        grid_search_space(parse_search_space({f"p{i}": list(range(10)) for i in range(6)}))
