"""
The settings of a tuning study, checked without Optuna: direction, sampler, pruner and budget.

``sampler`` and ``pruner`` are names or dicts with options::

    sampler="tpe"                                   # default; also "random", "grid"
    sampler={"type": "tpe", "n_startup_trials": 5}
    pruner="median"                                 # default; also "hyperband", "none"
    pruner={"type": "median", "n_startup_trials": 5, "n_warmup_steps": 2}
    pruner={"type": "hyperband", "min_resource": 1, "max_resource": 20, "reduction_factor": 3}
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from airflow_ml_provider.ml.tuning.space import ParamSpec, grid_search_space, parse_search_space

DIRECTIONS = ("maximize", "minimize")
SAMPLER_OPTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "tpe": {"n_startup_trials": int, "n_ei_candidates": int, "multivariate": bool, "constant_liar": bool},
    "random": {},
    "grid": {},
}
PRUNER_OPTIONS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "median": {"n_startup_trials": int, "n_warmup_steps": int, "interval_steps": int},
    "hyperband": {"min_resource": int, "max_resource": (int, str), "reduction_factor": int},
    "none": {},
}
# Metric names whose direction is clear; anything else needs direction=.
_MINIMIZE_WORDS = ("loss", "error", "mse", "mae", "rmse", "logloss", "crossentropy", "perplexity")
_MAXIMIZE_WORDS = ("acc", "auc", "precision", "recall", "f1", "r2", "score", "map", "ndcg")
DEFAULT_MAX_FAILED_TRIALS = 3


def infer_direction(metric: str) -> str | None:
    """``maximize`` / ``minimize`` for well-known metric names (``val_auc``, ``loss`` ...), else None."""
    words = metric.lower().replace("-", "_").split("_")
    if any(word in _MINIMIZE_WORDS for word in words):
        return "minimize"
    if any(word.startswith(_MAXIMIZE_WORDS) for word in words):
        return "maximize"
    return None


def _named_options(
    what: str, raw: Any, catalogue: dict[str, dict[str, type | tuple[type, ...]]]
) -> tuple[str, dict[str, Any]]:
    """Split ``"name"`` or ``{"type": name, **options}`` and check the options' names and types."""
    if isinstance(raw, str):
        name, options = raw, {}
    elif isinstance(raw, dict):
        options = dict(raw)
        name = options.pop("type", None)
    else:
        raise ValueError(
            f"{what} must be a name ({', '.join(catalogue)}) or a dict with 'type', got {raw!r}."
        )
    if name not in catalogue:
        close = difflib.get_close_matches(str(name), list(catalogue), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{what} {name!r} is not one of {', '.join(catalogue)}.{hint}")
    _check_options(what, str(name), options, catalogue[name])
    return str(name), options


def _check_options(what: str, name: str, options: dict[str, Any], allowed: dict[str, Any]) -> None:
    for key, value in options.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise ValueError(f"{what} {name!r} has no option {key!r} (options: {known}).")
        if (isinstance(value, bool) and allowed[key] is not bool) or not isinstance(value, allowed[key]):
            raise ValueError(f"{what} {name!r}: {key} has the wrong type: {value!r}.")
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"{what} {name!r}: {key} must be >= 0, got {value!r}.")
    if (
        name == "hyperband"
        and isinstance(options.get("max_resource"), str)
        and options["max_resource"] != "auto"
    ):
        raise ValueError(
            f"{what} 'hyperband': max_resource is an int or 'auto', got {options['max_resource']!r}."
        )


def _optional_count(name: str, value: Any, *, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} or None, got {value!r}.")
    return int(value)


@dataclass(frozen=True)
class StudySettings:
    """A checked tuning configuration; :func:`study_settings` builds it from the step's spec."""

    metric: str
    direction: str
    space: dict[str, ParamSpec]
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    n_trials: int | None = None
    timeout: float | None = None
    max_failed_trials: int | None = DEFAULT_MAX_FAILED_TRIALS
    seed: int | None = None

    def grid(self) -> dict[str, list[Any]] | None:
        return grid_search_space(self.space) if self.sampler == "grid" else None

    @property
    def trial_budget(self) -> int | None:
        """Trials to start in all: ``n_trials``; with the grid sampler at most one per grid point."""
        grid = self.grid()
        if grid is None:
            return self.n_trials
        size = math.prod(len(values) for values in grid.values())
        return size if self.n_trials is None else min(self.n_trials, size)

    def build_sampler(self, worker_index: int = 0, parallel: bool = False) -> Any:
        """
        The Optuna sampler for one worker.

        Workers seed their samplers differently (``seed + worker_index``): with one seed, parallel
        random samplers would propose the same points. TPE lies about running trials
        (``constant_liar``) when workers run in parallel, so that they spread out.
        """
        import optuna

        seed = None if self.seed is None else int(self.seed) + worker_index
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if self.sampler == "grid":

            class WorkerGridSampler(optuna.samplers.GridSampler):
                """Optuna's grid sampler, without the ``study.stop()`` it calls outside ``optimize``
                when the grid is done: the worker loop stops by its own budget."""

                def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
                    return None

            # One seed for all workers (0 when none is given): it shuffles the grid, and trial i
            # takes point i of that order in whichever worker runs it.
            return WorkerGridSampler(self.grid() or {}, seed=self.seed if self.seed is not None else 0)
        options = {"constant_liar": parallel, **self.sampler_options}
        return optuna.samplers.TPESampler(seed=seed, **options)

    def build_pruner(self) -> Any:
        import optuna

        if self.pruner == "none":
            return optuna.pruners.NopPruner()
        if self.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(**self.pruner_options)
        return optuna.pruners.MedianPruner(**self.pruner_options)


def study_settings(spec: dict[str, Any]) -> StudySettings:
    """
    Check the tuning part of a spec; ValueError naming the first bad field and what to give instead.

    Keys: ``metric``, ``direction``, ``search_space``, ``hyperparameters`` (fixed), ``sampler``,
    ``pruner``, ``n_trials``, ``timeout``, ``max_failed_trials``, ``seed``.
    """
    metric = spec.get("metric")
    if not isinstance(metric, str) or not metric.strip():
        raise ValueError(f"metric must name the value to optimize (e.g. 'val_auc'), got {metric!r}.")
    direction = spec.get("direction") or infer_direction(metric)
    if direction is None:
        raise ValueError(
            f"direction is not given and cannot be told from the metric name {metric!r}: "
            "set direction='maximize' or 'minimize'."
        )
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}.")
    fixed = spec.get("hyperparameters") or {}
    if not isinstance(fixed, dict):
        raise ValueError(f"hyperparameters (the fixed ones) must be a dict, got {type(fixed).__name__}.")
    space = parse_search_space(spec.get("search_space"), fixed=fixed)
    sampler, sampler_options = _named_options("sampler", spec.get("sampler") or "tpe", SAMPLER_OPTIONS)
    pruner, pruner_options = _named_options("pruner", spec.get("pruner") or "median", PRUNER_OPTIONS)
    n_trials = _optional_count("n_trials", spec.get("n_trials"), minimum=1)
    timeout = spec.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ValueError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}.")
    if n_trials is None and timeout is None and sampler != "grid":
        raise ValueError("give a budget: n_trials, timeout (seconds), or both.")
    seed = spec.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an int or None, got {seed!r}.")
    settings = StudySettings(
        metric=metric,
        direction=direction,
        space=space,
        sampler=sampler,
        sampler_options=sampler_options,
        pruner=pruner,
        pruner_options=pruner_options,
        n_trials=n_trials,
        timeout=float(timeout) if timeout is not None else None,
        max_failed_trials=_optional_count(
            "max_failed_trials", spec.get("max_failed_trials", DEFAULT_MAX_FAILED_TRIALS), minimum=1
        ),
        seed=seed,
    )
    settings.grid()  # a grid over a continuous parameter fails here, before any trial
    return settings
