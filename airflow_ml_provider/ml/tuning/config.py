"""
The settings of a tuning study in Optuna: the sampler, the pruner and the trial budget.

The keys (``metric``, ``direction``, ``search_space``, ``sampler``, ``pruner``, ``n_trials`` ...),
their meaning and their checks are declared once, by
:class:`~airflow_ml_provider.ml.specs.tuning.StudyOptions`; this module adds what Optuna makes of
them (Optuna is imported inside the functions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from airflow_ml_provider.ml.specs.search_space import grid_search_space
from airflow_ml_provider.ml.specs.tuning import (
    DEFAULT_MAX_FAILED_TRIALS,
    DIRECTIONS,
    PRUNER_OPTIONS,
    SAMPLER_OPTIONS,
    StudyOptions,
    infer_direction,
)

__all__ = [
    "DEFAULT_MAX_FAILED_TRIALS",
    "DIRECTIONS",
    "PRUNER_OPTIONS",
    "SAMPLER_OPTIONS",
    "StudySettings",
    "infer_direction",
    "study_settings",
]


@dataclass(frozen=True, kw_only=True)
class StudySettings(StudyOptions):
    """The checked study keys of a tuning spec (see :class:`StudyOptions`), and their Optuna objects."""

    @classmethod
    def of(cls, options: StudyOptions) -> StudySettings:
        """The settings of a parsed spec (a ``TuneSpec`` or ``TuningSummarySpec``)."""
        return cls(**{f.name: getattr(options, f.name) for f in fields(StudyOptions)})

    def grid(self) -> dict[str, list[Any]] | None:
        return grid_search_space(self.search_space) if self.sampler == "grid" else None

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
    Check the study keys of a tuning spec (see :class:`StudyOptions`); ValueError naming the first
    bad key and what to give instead.
    """
    return StudySettings.parse(spec)
