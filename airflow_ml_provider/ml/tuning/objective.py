"""
What a trial runs: the training ``run_fn(ctx)`` of the training step, or a plain objective function.

``run_fn``: the same contract as :class:`~airflow_ml_provider.ml.training.context.TrainingContext`.
``ctx.hyperparameters`` holds the fixed hyperparameters and the trial's values; the callbacks of
``ctx.callbacks()`` report the tuned metric (e.g. ``val_auc``) after every epoch, and the pruner
may stop the trial there. The trial's value is the metric's last reported value (else the last
value in the returned model's history). No model is exported: the training task that follows
trains with the best values.

A plain objective ``fn(ctx: TrialContext) -> float | dict`` gets the same hyperparameters, reports
intermediate values with ``ctx.report(value, step)`` (which raises when the trial is pruned) and
returns the value, or a dict of metrics that holds the tuned one.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_ml_provider.ml.registry import resolve_step
from airflow_ml_provider.ml.scratch import make_scratch_dir
from airflow_ml_provider.ml.specs.tuning import OBJECTIVE_KINDS as OBJECTIVE_KINDS  # declared with the spec
from airflow_ml_provider.ml.specs.tuning import TuneObjective, TuneSpec
from airflow_ml_provider.ml.training.context import ChiefTracker
from airflow_ml_provider.ml.tuning.trial_runs import RunHandle, TrialRuns

log = logging.getLogger(__name__)


class Reporter:
    """
    The link between a running trial, Optuna and the trial's MLflow run.

    :param trial: the Optuna trial.
    :param runs: where the trial's MLflow run is written.
    :param run: the trial's MLflow run (None without tracking).
    :param metric: the tuned metric's name.
    :param prune: ask the pruner after every report (not when there is none: it costs a read).
    """

    def __init__(
        self, trial: Any, runs: TrialRuns, run: RunHandle | None, metric: str, prune: bool = True
    ) -> None:
        self.trial = trial
        self.runs = runs
        self.run = run
        self.metric = metric
        self.prune = prune
        self.last_value: float | None = None
        self.last_step = -1
        self.steps = 0

    def report(self, value: float, step: int, *, log: bool = True) -> None:
        """
        Report an intermediate value; raise ``optuna.TrialPruned`` when the pruner stops the trial.

        :param log: also log it to the trial's MLflow run (the epoch logger already did for run_fn).
        """
        import optuna

        value = _finite(value, f"the intermediate value of {self.metric!r} at step {step}")
        self.trial.report(value, int(step))
        if log:
            self.runs.report(self.run, self.metric, value, int(step))
        self.last_value, self.last_step = value, int(step)
        self.steps += 1
        if self.prune and self.trial.should_prune():
            raise optuna.TrialPruned(
                f"Trial {self.trial.number} pruned at step {step} ({self.metric}={value:g})"
            )

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """An epoch hook of the training context: report the tuned metric of this epoch."""
        if self.metric not in metrics:
            raise KeyError(
                f"metric {self.metric!r} is not among the epoch metrics {sorted(metrics)}; set metric= to "
                "one of them (validation metrics need validation_data in fit)."
            )
        self.report(metrics[self.metric], epoch, log=False)


def _finite(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} is not a number: {value!r}.") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} is {number} (the objective diverged?).")
    return number


class _TrialTracker(ChiefTracker):
    """``ctx.log_metrics`` / ``ctx.log_params`` of a trial go to the trial's run (buffered)."""

    def __init__(self, runs: TrialRuns, run: RunHandle | None) -> None:
        super().__init__(run.run_id if run else None, enabled=run is not None, tracking_uri=runs.tracking_uri)
        self.runs = runs
        self.run = run

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        if self.enabled:
            self.runs.log_metrics(self.run, metrics, step)


@dataclass
class TrialContext:
    """
    What a plain objective function gets.

    :param number: the trial's number in the study.
    :param params: the values Optuna chose for this trial.
    :param hyperparameters: the fixed hyperparameters and ``params``.
    :param custom_config: anything else the DAG author passes through.
    :param metric: the tuned metric's name.
    :param seed: the task's seed, if any.
    :param worker: the index of the worker running the trial.
    """

    number: int
    params: dict[str, Any]
    hyperparameters: dict[str, Any]
    custom_config: dict[str, Any]
    metric: str
    seed: int | None
    worker: int
    reporter: Reporter = field(repr=False)

    def report(self, value: float, step: int) -> None:
        """Report an intermediate value (e.g. per epoch); raises ``optuna.TrialPruned`` to stop the trial."""
        self.reporter.report(value, step)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log more metrics to the trial's MLflow run."""
        self.reporter.runs.log_metrics(self.reporter.run, dict(metrics), step)


Objective = Callable[[Any, Reporter, dict[str, Any]], float]


def _value_from(result: Any, reporter: Reporter, source: str) -> float:
    if isinstance(result, Mapping):
        if reporter.metric not in result:
            raise KeyError(
                f"{source} returned the metrics {sorted(result)}, without the tuned metric {reporter.metric!r}."
            )
        numbers = {str(k): float(v) for k, v in result.items() if isinstance(v, (int, float))}
        reporter.runs.log_metrics(reporter.run, {f"final_{k}": v for k, v in numbers.items()})
        return _finite(result[reporter.metric], f"{source}'s {reporter.metric!r}")
    return _finite(result, f"the value {source} returned")


class FunctionObjective:
    """A plain ``fn(ctx: TrialContext)``."""

    def __init__(self, ref: str, spec: TuneSpec, worker: int = 0) -> None:
        self.ref = ref
        self.fn: Any = resolve_step(ref)
        self.custom_config = dict(spec.custom_config)
        self.seed = spec.seed
        self.worker = worker

    def __call__(self, trial: Any, reporter: Reporter, hyperparameters: dict[str, Any]) -> float:
        ctx = TrialContext(
            number=trial.number,
            params=dict(trial.params),
            hyperparameters=hyperparameters,
            custom_config=self.custom_config,
            metric=reporter.metric,
            seed=self.seed,
            worker=self.worker,
            reporter=reporter,
        )
        return _value_from(self.fn(ctx), reporter, self.ref)


class TrainingObjective:
    """The training ``run_fn(ctx)``, one process per trial worker, on a one-device strategy."""

    def __init__(self, ref: str, spec: TuneSpec, threads: int | None = None) -> None:
        from airflow_ml_provider.ml.training.cluster import WorkerRole
        from airflow_ml_provider.ml.training.step import build_strategy, import_tensorflow

        tf = import_tensorflow()  # as the training step: tf.keras = tf_keras, Keras left unconverted

        if threads:
            # Parallel trials share the machine's cores instead of each taking them all.
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, int(threads))))
        self.ref = ref
        self.run_fn: Any = resolve_step(ref)
        self.spec = spec
        self.role = WorkerRole(0, 1)
        self.strategy = build_strategy("one_device", self.role)

    def __call__(self, trial: Any, reporter: Reporter, hyperparameters: dict[str, Any]) -> float:
        import tensorflow as tf
        import tf_keras

        from airflow_ml_provider.ml.training.context import TrainingContext

        spec = self.spec
        if spec.seed is not None:
            tf.keras.utils.set_random_seed(spec.seed)
        workdir = make_scratch_dir(f"ml-trial-{trial.number}")
        try:
            ctx = TrainingContext.from_spec(
                spec,
                hyperparameters=hyperparameters,
                model_dir=f"{workdir}/model",
                strategy=self.strategy,
                strategy_name="one_device",
                role=self.role,
                mlflow_run_id=reporter.run.run_id if reporter.run else None,
                seed=spec.seed,
                tracker=_TrialTracker(reporter.runs, reporter.run),
                trial_number=trial.number,
                epoch_hooks=[reporter.on_epoch],
            )
            model = self.run_fn(ctx)
            if reporter.last_value is not None:
                return reporter.last_value
            history = getattr(getattr(model, "history", None), "history", None) or {}
            if reporter.metric not in history or not history[reporter.metric]:
                raise KeyError(
                    f"run_fn {self.ref} reported no {reporter.metric!r}: pass callbacks=ctx.callbacks() to "
                    f"fit (that also enables pruning), or set metric= to one of {sorted(history)}."
                )
            return _finite(history[reporter.metric][-1], f"{reporter.metric!r} of the last epoch")
        finally:
            tf_keras.backend.clear_session()  # trials run one after another in this process
            shutil.rmtree(workdir, ignore_errors=True)


def check_objective(spec: dict[str, Any]) -> tuple[str, str]:
    """
    ``(kind, reference)`` of a spec's objective; ValueError when it is missing or malformed.

    :param spec: a dict with ``objective`` (and ``train_uri`` for a ``run_fn``), checked as
        :class:`~airflow_ml_provider.ml.specs.TuneObjective` does.
    """
    objective = TuneObjective.read(spec)
    return objective.kind, objective.ref


def build_objective(spec: TuneSpec, *, worker: int = 0) -> Objective:
    """The objective of the spec, with its heavy imports done once per worker (``spec.threads``)."""
    kind, ref = spec.objective.kind, spec.objective.ref
    if kind == "run_fn":
        return TrainingObjective(ref, spec, spec.threads)
    return FunctionObjective(ref, spec, worker)
