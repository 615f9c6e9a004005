"""Study settings: direction, sampler, pruner and budget are checked before a worker starts."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_ml_provider.ml.tuning.config import infer_direction, study_settings

pytestmark = pytest.mark.unit

SPACE = {"lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}}


def _spec(**kwargs: Any) -> dict[str, Any]:
    return {"metric": "val_auc", "search_space": SPACE, "n_trials": 10, **kwargs}


@pytest.mark.parametrize(
    ("metric", "direction"),
    [
        ("val_auc", "maximize"),
        ("accuracy", "maximize"),
        ("val_f1_score", "maximize"),
        ("precision", "maximize"),
        ("val_loss", "minimize"),
        ("rmse", "minimize"),
        ("error_rate", "minimize"),
        ("latency_ms", None),
        ("objective", None),
    ],
)
def test_direction_is_told_from_well_known_metric_names(metric, direction):
    assert infer_direction(metric) == direction


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": ""}, "metric must name the value to optimize"),
        (
            {"metric": "latency_ms"},
            "direction is not given and cannot be told from the metric name 'latency_ms'",
        ),
        ({"direction": "up"}, "direction must be 'maximize' or 'minimize', got 'up'"),
        ({"sampler": "tpee"}, "sampler 'tpee' is not one of tpe, random, grid. Did you mean 'tpe'"),
        (
            {"sampler": {"type": "tpe", "n_startup": 3}},
            r"sampler 'tpe' has no option 'n_startup' \(options: constant_liar",
        ),
        ({"sampler": {"type": "tpe", "n_startup_trials": "3"}}, "n_startup_trials has the wrong type"),
        (
            {"sampler": {"type": "random", "seed": 1}},
            r"sampler 'random' has no option 'seed' \(options: none\)",
        ),
        ({"sampler": 3}, "sampler must be a name"),
        ({"pruner": "mediam"}, "Did you mean 'median'"),
        ({"pruner": {"type": "median", "n_warmup_steps": -1}}, "n_warmup_steps must be >= 0"),
        ({"pruner": {"type": "hyperband", "max_resource": "all"}}, "max_resource is an int or 'auto'"),
        ({"pruner": {"type": "median", "n_warmup_steps": True}}, "n_warmup_steps has the wrong type"),
        ({"n_trials": 0}, "n_trials must be an int >= 1 or None, got 0"),
        ({"n_trials": "10"}, "n_trials must be an int"),
        ({"n_trials": None}, "give a budget: n_trials, timeout"),
        ({"timeout": 0}, "timeout must be a number of seconds > 0"),
        ({"max_failed_trials": 0}, "max_failed_trials must be an int >= 1 or None"),
        ({"seed": 1.5}, "seed must be an int or None"),
        ({"hyperparameters": [1]}, "hyperparameters .* must be a dict"),
        ({"sampler": "grid"}, "the grid sampler needs a finite set of values"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        study_settings(_spec(**kwargs))


def test_defaults_and_budgets():
    settings = study_settings(_spec())
    assert (settings.direction, settings.sampler, settings.pruner, settings.max_failed_trials) == (
        "maximize", "tpe", "median", 3
    )  # fmt: skip
    assert study_settings(_spec(n_trials=None, timeout=60)).timeout == 60.0
    assert study_settings(_spec(max_failed_trials=None)).max_failed_trials is None
    grid = study_settings(_spec(search_space={"units": [8, 16]}, sampler="grid", n_trials=None))
    assert grid.grid() == {"units": [8, 16]} and grid.trial_budget == 2
    assert (
        study_settings(_spec(search_space={"units": [8, 16, 32]}, sampler="grid", n_trials=2)).trial_budget
        == 2
    )
    assert study_settings(_spec(n_trials=7)).trial_budget == 7


def test_parallel_samplers_are_seeded_apart_and_tpe_lies_about_running_trials():
    settings = study_settings(_spec(seed=7, sampler={"type": "tpe", "n_startup_trials": 4}))
    first, second = settings.build_sampler(0, parallel=True), settings.build_sampler(1, parallel=True)
    assert first._constant_liar and second._constant_liar
    assert first._n_startup_trials == 4
    random = study_settings(_spec(seed=7, sampler="random"))
    a, b = random.build_sampler(0), random.build_sampler(1)
    assert a._rng.rng.random() != b._rng.rng.random()
