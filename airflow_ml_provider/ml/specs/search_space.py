"""
Search spaces as plain data (the ``search_space`` key of a tuning spec), checked without Optuna so
that a bad one fails before any trial runs.

A search space maps each hyperparameter to its range::

    {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
        "hidden_units": {"type": "int", "low": 8, "high": 128, "step": 8},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "batch_size": [128, 256, 512],          # a list is short for a categorical
    }

``int`` and ``float`` take ``low`` and ``high`` (both included), ``log`` (sample on a log scale;
``low`` must then be > 0) or ``step`` (the grid between them). ``categorical`` takes ``choices``:
strings, numbers, booleans or null.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

PARAM_TYPES = ("int", "float", "categorical")
_KEYS = {
    "int": {"type", "low", "high", "step", "log"},
    "float": {"type", "low", "high", "step", "log"},
    "categorical": {"type", "choices"},
}
MAX_GRID_POINTS = 100_000


def _where(name: str) -> str:
    return f"search_space[{name!r}]"


def _suggest(word: str, known: set[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, sorted(known), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _number(name: str, key: str, value: Any, *, integer: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{_where(name)}: {key} must be a number, got {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"{_where(name)}: {key} must be finite, got {value!r}.")
    if integer and float(value) != int(value):
        raise ValueError(f"{_where(name)}: {key} of an int parameter must be a whole number, got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class ParamSpec:
    """One hyperparameter's range, as the DAG author gave it (checked)."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def distribution(self) -> Any:
        """The Optuna distribution of this parameter (imports Optuna)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.type == "categorical":
            return CategoricalDistribution(list(self.choices))
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def grid(self) -> list[Any]:
        """Every value of a finite parameter (for the grid sampler); ValueError for a continuous one."""
        if self.type == "categorical":
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.type == "int":
            if self.log:
                raise ValueError(
                    f"{_where(self.name)}: the grid sampler cannot enumerate a log-scale int; give a step "
                    "instead of log=True, or a categorical list of the values to try."
                )
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            raise ValueError(
                f"{_where(self.name)}: the grid sampler needs a finite set of values; give this float a "
                "step, or list the values as a categorical."
            )
        count = int(round((self.high - self.low) / self.step)) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]


def _parse_range(name: str, kind: str, body: dict[str, Any]) -> ParamSpec:
    integer = kind == "int"
    for key in ("low", "high"):
        if key not in body:
            raise ValueError(f"{_where(name)}: a {kind} parameter needs {key!r} (and 'high'/'low').")
    low = _number(name, "low", body["low"], integer=integer)
    high = _number(name, "high", body["high"], integer=integer)
    if low > high:
        raise ValueError(f"{_where(name)}: low ({body['low']!r}) is above high ({body['high']!r}).")
    log = body.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"{_where(name)}: log must be true or false, got {log!r}.")
    if log and low <= 0:
        raise ValueError(
            f"{_where(name)}: a log-scale range needs low > 0, got {body['low']!r}; raise low or drop log."
        )
    step = body.get("step")
    if step is not None:
        step = _number(name, "step", step, integer=integer)
        if step <= 0:
            raise ValueError(f"{_where(name)}: step must be > 0, got {body['step']!r}.")
        if log and (not integer or step != 1):
            raise ValueError(f"{_where(name)}: give either log=True or a step, not both.")
        span = (high - low) / step
        if abs(span - round(span)) > 1e-9:
            fitted = low + math.floor(span + 1e-9) * step
            raise ValueError(
                f"{_where(name)}: high - low ({high - low:g}) is not a multiple of step ({step:g}); "
                f"set high to {fitted:g} or change the step."
            )
    return ParamSpec(name, kind, low=low, high=high, step=step, log=log)


def _parse_choices(name: str, choices: Any) -> ParamSpec:
    if not isinstance(choices, (list, tuple)) or not choices:
        raise ValueError(f"{_where(name)}: choices must be a non-empty list, got {choices!r}.")
    seen: list[Any] = []
    for choice in choices:
        if choice is not None and not isinstance(choice, (str, int, float, bool)):
            raise ValueError(
                f"{_where(name)}: choices may be strings, numbers, booleans or null, got "
                f"{type(choice).__name__} {choice!r}."
            )
        if isinstance(choice, float) and not math.isfinite(choice):
            raise ValueError(f"{_where(name)}: choice {choice!r} is not a finite number.")
        if any(type(choice) is type(s) and choice == s for s in seen):
            raise ValueError(f"{_where(name)}: choice {choice!r} is listed twice.")
        seen.append(choice)
    return ParamSpec(name, "categorical", choices=tuple(seen))


def _parse_param(name: Any, body: Any) -> ParamSpec:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"search_space: parameter names must be non-empty strings, got {name!r}.")
    if isinstance(body, (list, tuple)):
        return _parse_choices(name, body)
    if not isinstance(body, dict):
        raise ValueError(
            f"{_where(name)}: give a dict such as {{'type': 'float', 'low': 0.001, 'high': 0.1}} or a "
            f"list of choices, got {type(body).__name__} {body!r}."
        )
    kind = body.get("type")
    if kind not in PARAM_TYPES:
        hint = _suggest(str(kind), PARAM_TYPES) if isinstance(kind, str) else ""
        raise ValueError(f"{_where(name)}: type must be one of {', '.join(PARAM_TYPES)}, got {kind!r}.{hint}")
    unknown = sorted(set(body) - _KEYS[kind])
    if unknown:
        raise ValueError(
            f"{_where(name)}: unknown key {unknown[0]!r} for a {kind} parameter (allowed: "
            f"{', '.join(sorted(_KEYS[kind]))}).{_suggest(unknown[0], _KEYS[kind])}"
        )
    if kind == "categorical":
        return _parse_choices(name, body.get("choices"))
    return _parse_range(name, kind, body)


def parse_search_space(raw: Any, *, fixed: dict[str, Any] | None = None) -> dict[str, ParamSpec]:
    """
    Check a search space and return its parameters; ValueError naming the first bad entry.

    :param raw: the search space (see the module docstring).
    :param fixed: hyperparameters passed as they are; a name may not be both fixed and searched.
    """
    if not isinstance(raw, dict):
        raise ValueError(
            f"search_space must be a dict of parameter name -> range, got {type(raw).__name__}: "
            f"{str(raw)[:100]!r} (use render_template_as_native_obj=True when it comes from a template)."
        )
    if not raw:
        raise ValueError("search_space is empty: give at least one hyperparameter to tune.")
    space = {name: _parse_param(name, body) for name, body in raw.items()}
    both = sorted(set(space) & set(fixed or {}))
    if both:
        raise ValueError(
            f"{both[0]!r} is both in search_space and in the fixed hyperparameters; keep it in one of them."
        )
    return space


def grid_search_space(space: dict[str, ParamSpec]) -> dict[str, list[Any]]:
    """Every parameter's values for the grid sampler; ValueError when one is continuous or the grid is huge."""
    grid = {name: spec.grid() for name, spec in space.items()}
    size = math.prod(len(values) for values in grid.values())
    if size > MAX_GRID_POINTS:
        raise ValueError(
            f"search_space: the grid has {size:,} points (over {MAX_GRID_POINTS:,}); coarsen the steps or "
            "use sampler='tpe' or 'random'."
        )
    return grid
