"""
Specs of the tuning steps, ``tune`` (one worker of a study) and ``tuning_summary``.

Their messages name the key without a step prefix (``metric must ...``), as the operator has
always shown them after ``Task 'tune': ``. ``sampler`` and ``pruner`` are names or dicts with
options::

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

from airflow_ml_provider.ml.specs._base import Reader, StepSpec, derived, is_int, is_number
from airflow_ml_provider.ml.specs.search_space import ParamSpec, grid_search_space, parse_search_space
from airflow_ml_provider.ml.specs.training import (
    MlflowTarget,
    TrainingInputs,
    optional_seed,
    user_reference,
)

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
OBJECTIVE_KINDS = ("run_fn", "function")
MAX_STUDY_NAME = 500
DEFAULT_HEARTBEAT_SECONDS = 10
DEFAULT_GRACE_SECONDS = 60


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
        if is_int(value) and value < 0:
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
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum} or None, got {value!r}.")
    return int(value)


def _objective_values(spec: dict[str, Any]) -> tuple[str, str]:
    """The metric and the direction (given, or told from the metric's name)."""
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
    return metric, str(direction)


def _budget_values(spec: dict[str, Any], sampler: str) -> dict[str, Any]:
    """``n_trials``, ``timeout`` and ``max_failed_trials``: a budget must be given (or the grid)."""
    n_trials = _optional_count("n_trials", spec.get("n_trials"), minimum=1)
    timeout = spec.get("timeout")
    if timeout is not None and (not is_number(timeout) or not math.isfinite(timeout) or timeout <= 0):
        raise ValueError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}.")
    if n_trials is None and timeout is None and sampler != "grid":
        raise ValueError("give a budget: n_trials, timeout (seconds), or both.")
    return {
        "n_trials": n_trials,
        "timeout": float(timeout) if timeout is not None else None,
        "max_failed_trials": _optional_count(
            "max_failed_trials", spec.get("max_failed_trials", DEFAULT_MAX_FAILED_TRIALS), minimum=1
        ),
    }


@dataclass(frozen=True, kw_only=True)
class StudyOptions(StepSpec):
    """
    The study keys of the tuning specs (``tune``, ``tuning_summary``): what to optimize, over which
    space, how, and for how long. :class:`~airflow_ml_provider.ml.tuning.config.StudySettings`
    adds what Optuna makes of them.

    :param metric: the value to optimize, e.g. ``"val_auc"`` (an epoch metric of a ``run_fn``'s
        ``fit``, or a key of what an objective function returns).
    :param direction: ``"maximize"`` or ``"minimize"``; when null, told from well-known metric
        names (``auc``, ``acc`` ... maximize; ``loss``, ``error`` ... minimize).
    :param search_space: each tuned hyperparameter's range (see
        :mod:`~airflow_ml_provider.ml.specs.search_space`); parsed to :class:`ParamSpec` per name.
    :param hyperparameters: values passed as they are to every trial (a name may not also be
        searched).
    :param sampler: ``"tpe"`` (default), ``"random"``, ``"grid"``, or a dict with ``type`` and
        options (see the module docstring); parsed to the name.
    :param sampler_options: (derived) the sampler's options.
    :param pruner: ``"median"`` (default), ``"hyperband"``, ``"none"``, or a dict with ``type``
        and options; parsed to the name.
    :param pruner_options: (derived) the pruner's options.
    :param n_trials: trials to start in all, across workers (int >= 1); null for a time budget only.
    :param timeout: stop starting trials after this many seconds; null for none. One of
        ``n_trials`` and ``timeout`` is required, unless the grid sampler bounds the study.
    :param max_failed_trials: failed trials that end the study (default 3); null (given as null,
        not left out) for no limit.
    :param seed: seeds the samplers (worker i uses ``seed + i``) and every trial's TensorFlow.
    """

    step = "tune"

    metric: str
    direction: str
    search_space: dict[str, ParamSpec]
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = derived()
    pruner: str = "median"
    pruner_options: dict[str, Any] = derived()
    n_trials: int | None = None
    timeout: float | None = None
    max_failed_trials: int | None = DEFAULT_MAX_FAILED_TRIALS
    seed: int | None = None

    @classmethod
    def _study_values(cls, spec: dict[str, Any]) -> dict[str, Any]:
        metric, direction = _objective_values(spec)
        fixed = spec.get("hyperparameters") or {}
        if not isinstance(fixed, dict):
            raise ValueError(f"hyperparameters (the fixed ones) must be a dict, got {type(fixed).__name__}.")
        space = parse_search_space(spec.get("search_space"), fixed=fixed)
        sampler, sampler_options = _named_options("sampler", spec.get("sampler") or "tpe", SAMPLER_OPTIONS)
        pruner, pruner_options = _named_options("pruner", spec.get("pruner") or "median", PRUNER_OPTIONS)
        values = {
            "metric": metric,
            "direction": direction,
            "search_space": space,
            "hyperparameters": dict(fixed),
            "sampler": sampler,
            "sampler_options": sampler_options,
            "pruner": pruner,
            "pruner_options": pruner_options,
            **_budget_values(spec, sampler),
            "seed": optional_seed(Reader(spec, "", quoted=False)),
        }
        if sampler == "grid":
            grid_search_space(space)  # a grid over a continuous parameter fails here, before any trial
        return values

    @classmethod
    def _values(cls, spec: dict[str, Any]) -> dict[str, Any]:
        return cls._study_values(spec)


@dataclass(frozen=True, kw_only=True)
class StudyLocation(StepSpec):
    """
    Where a study is: its name, in a database every worker reaches.

    :param study_name: the study (required; at most 500 characters).
    :param storage: a SQLAlchemy URL holding no secret, used when the worker's environment has no
        ``AIRFLOW_ML_TUNING_STORAGE`` (which the launchers set; a spec is logged and shown, so a
        URL with a password never goes into it).
    """

    study_name: str
    storage: str | None = None

    @classmethod
    def _location_values(cls, spec: dict[str, Any]) -> dict[str, Any]:
        name = spec.get("study_name")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_STUDY_NAME:
            raise ValueError(
                f"study_name must be a non-empty string of at most {MAX_STUDY_NAME} characters, got {name!r}."
            )
        return {"study_name": name, "storage": Reader(spec, "", quoted=False).text("storage")}


@dataclass(frozen=True, kw_only=True)
class TuneObjective:
    """
    What a trial runs: ``{"kind": "run_fn" | "function", "ref": "package.module:function"}``.

    :param kind: ``run_fn``: the training function of ``train_model`` (``ctx`` as there, one
        device); ``function``: a plain ``fn(ctx: TrialContext) -> float | dict``.
    :param ref: the function, importable in the workers.
    """

    kind: str
    ref: str

    @classmethod
    def read(cls, spec: dict[str, Any]) -> TuneObjective:
        objective = spec.get("objective")
        if not isinstance(objective, dict) or objective.get("kind") not in OBJECTIVE_KINDS:
            raise ValueError(
                "objective must be {'kind': 'run_fn' | 'function', 'ref': 'package.module:function'}, "
                f"got {objective!r}."
            )
        ref = user_reference(Reader(spec, "", quoted=False), "objective ref", objective.get("ref"))
        if objective["kind"] == "run_fn" and not spec.get("train_uri"):
            raise ValueError("a run_fn objective needs train_uri (the training data of every trial).")
        return cls(kind=str(objective["kind"]), ref=ref)


def _owner(read: Reader) -> dict[str, Any] | None:
    owner = read.get("owner")
    if owner is None:
        return None
    if (
        not isinstance(owner, dict)
        or not isinstance(owner.get("key"), str)
        or not is_int(owner.get("try_number"))
    ):
        raise read.error("owner", f"must be {{'key': str, 'try_number': int}} or null, got {owner!r}.")
    return dict(owner)


@dataclass(frozen=True, kw_only=True)
class TuneSpec(StudyOptions, StudyLocation, TrainingInputs):
    """
    The spec of ``tune``: one worker of a study, which every worker (local process, mapped task,
    pod) runs with the same spec until the study's budget is spent. Other keys are ignored.

    Its keys are those of :class:`StudyOptions` (what to optimize), :class:`StudyLocation`
    (``study_name``, ``storage``), :class:`~airflow_ml_provider.ml.specs.training.TrainingInputs`
    (the data of a ``run_fn`` objective, and ``custom_config`` for both kinds), and:

    :param objective: what a trial runs (:class:`TuneObjective`; required).
    :param worker: this worker's index (default: ``AIRFLOW_ML_TUNING_WORKER``, else a pod's
        ``JOB_COMPLETION_INDEX``, else 0).
    :param parallel: whether other workers share the study (TPE then spreads them out).
    :param owner: ``{"key": ..., "try_number": n}``, the task instance that started this worker;
        its earlier tries' unfinished trials are failed and queued again at once.
    :param mlflow: the tuning task's MLflow run (:class:`MlflowTarget`: ``run_id``,
        ``experiment_id``), the parent of the trials' runs.
    :param heartbeat_interval: seconds between a running trial's heartbeats (default 10).
    :param grace_period: a trial without a heartbeat for this many seconds is failed and queued
        again by the next worker that looks (default: 3 heartbeats, at least 60 s).
    :param threads: CPU threads a TensorFlow trial may use (default: all).
    """

    step = "tune"

    objective: TuneObjective
    worker: int | None = None
    parallel: bool = False
    owner: dict[str, Any] | None = None
    mlflow: MlflowTarget = field(default_factory=MlflowTarget)
    heartbeat_interval: int = DEFAULT_HEARTBEAT_SECONDS
    grace_period: int | None = None
    threads: int | None = None

    @property
    def grace_seconds(self) -> int:
        """The grace period in effect: given, or 3 heartbeats and at least 60 s."""
        return self.grace_period or max(DEFAULT_GRACE_SECONDS, 3 * self.heartbeat_interval)

    @classmethod
    def _values(cls, spec: dict[str, Any]) -> dict[str, Any]:
        read = Reader(spec, "", quoted=False)
        study = cls._study_values(spec)
        location = cls._location_values(spec)
        objective = TuneObjective.read(spec)
        return {
            **study,
            **location,
            **cls._input_values(read),
            "train_uri": read.text("train_uri"),
            "objective": objective,
            "worker": read.integer("worker", None, 0),
            "parallel": read.boolean("parallel"),
            "owner": _owner(read),
            "mlflow": MlflowTarget.read(read),
            "heartbeat_interval": read.integer("heartbeat_interval", DEFAULT_HEARTBEAT_SECONDS, 1),
            "grace_period": read.integer("grace_period", None, 1),
            "threads": read.integer("threads", None, 1),
        }


@dataclass(frozen=True, kw_only=True)
class TuningSummarySpec(StudyOptions, StudyLocation):
    """
    The spec of ``tuning_summary``: the ``tune`` spec of the study (its other keys are ignored),
    plus where the summary's files go. The keys read are those of :class:`StudyOptions` and
    :class:`StudyLocation`, and:

    :param output_dir: where ``trials.csv``, ``summary.json`` and the plots go; null: nowhere.
    """

    step = "tuning_summary"

    output_dir: str | None = None

    @classmethod
    def _values(cls, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            **cls._study_values(spec),
            **cls._location_values(spec),
            "output_dir": Reader(spec, "", quoted=False).text("output_dir"),
        }
