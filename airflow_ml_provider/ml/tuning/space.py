"""
Search spaces in Optuna: the distributions of the parameters a tuning spec's ``search_space``
declares (the format and its checks: :mod:`airflow_ml_provider.ml.specs.search_space`).
"""

from __future__ import annotations

from typing import Any

from airflow_ml_provider.ml.specs.search_space import (
    MAX_GRID_POINTS,
    PARAM_TYPES,
    ParamSpec,
    grid_search_space,
    parse_search_space,
)

__all__ = [
    "MAX_GRID_POINTS",
    "PARAM_TYPES",
    "ParamSpec",
    "distributions",
    "grid_search_space",
    "parse_search_space",
]


def distributions(space: dict[str, ParamSpec]) -> dict[str, Any]:
    """Optuna distributions of every parameter (imports Optuna)."""
    return {name: spec.distribution() for name, spec in space.items()}
